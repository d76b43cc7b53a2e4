-- select: choose a deployment for a retry or a fallback model (breaker + capacity + lease).
-- REQ: {lease_id, lease_ttl_s, candidates: [{id, key, max_concurrency, weight}], cfg}
-- Returns {refusal or "", retry_after, deployment_id or "", probe, transitions, open_until}.
local out, open_until = {}, {}
local chosen, probe, retry, had_capacity = select_deployment(
  REQ.lease_id, REQ.lease_ttl_s, REQ.candidates, REQ.cfg, out, open_until, true)
local refusal = ''
if chosen == nil then
  refusal = had_capacity and 'circuit_open' or 'no_deployment'
end
flush()
return { refusal, num(retry), id_or_empty(chosen), flag(probe), out, open_until }
