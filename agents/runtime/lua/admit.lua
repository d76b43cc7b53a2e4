-- admit: agent breaker, rate limits, budgets, deployment choice; all or nothing.
-- REQ: {lease_id, lease_ttl_s, agent_key?, agent_cfg?, limits: [{key, limit, window_s, cost}],
--       holds: [{key, limit, amount, ttl_s}], candidates: [{id, key, max_concurrency, weight}],
--       deployment_cfg, cache?, record?: {stream, maxlen, field}}, and the record's value as
--       the call's fifth argument (BLOB)
-- Returns {refusal or "", retry_after, deployment_id or "", agent_probe, deployment_probe,
--          transitions (flat), open_until (flat key, time pairs),
--          budget_remaining (flat key, micro-USD pairs: after the reservation when admitted,
--          as found when refused for budget, the unknown window keys when refused as
--          budget_unknown, empty otherwise),
--          the entry id of REQ.record when admitted and one was given, else ''}.
-- Refusals: 'late' (the lease id was abandoned: see abandon.lua), 'circuit_open',
-- 'rate_limited', 'budget_unknown' (a window not prepared: see budget_prepare.lua),
-- 'budget_exceeded', 'no_deployment'.
--
-- With REQ.cache (the Redis key of a cached answer to this request) and a value under it,
-- returns {'cached', value} and takes nothing: the answer is served instead.
--
-- With REQ.record (the journal's "started" event of this execution), an admission that admits
-- appends it to its stream in the same atomic step: a process killed at any point can leave a
-- reservation only together with the record that has it found and charged (settle_dead), and a
-- refusal records nothing here (its "finished" event alone makes the row).
--
-- A refusal takes nothing (no lease, no probe, no rate budget, no reservation), but it does
-- apply the time-driven transitions an acquire would: half-open probes that gave no answer
-- within probe_timeout_s re-open the breaker here, so a breaker whose probes were lost cannot
-- stay half-open (refusing everything) forever when admit is the only caller.
if REQ.cache ~= nil then
  local hit = redis.call('GET', REQ.cache)
  if hit then
    return { 'cached', hit }
  end
end

-- Abandoned already (its caller was answered while this call waited behind a stall): take nothing.
if redis.call('EXISTS', gone_key(REQ.lease_id)) == 1 then
  return { 'late', '0', '', '0', '0', {}, {}, {} }
end

local out, open_until = {}, {}
local function refuse(reason, retry)
  flush()
  return { reason, num(retry), '', '0', '0', out, open_until, {} }
end

local agent = nil
if REQ.agent_key ~= nil then
  agent = breaker(REQ.agent_key)
  local allowed = br_peek(agent, REQ.agent_cfg)
  if not allowed then
    -- acquire refuses too (peek and acquire agree) and takes nothing on a refusal
    local _, _, retry = br_acquire(agent, REQ.agent_cfg, out)
    if agent.state == 'open' then
      open_until[#open_until + 1] = REQ.agent_key
      open_until[#open_until + 1] = num(agent.open_until)
    end
    return refuse('circuit_open', retry)
  end
end

local wait = rl_check(REQ.limits)
if wait > 0 then
  return refuse('rate_limited', wait)
end

local unknown = bg_unknown(REQ.holds, REQ.lease_id)
if #unknown > 0 then
  flush()
  return { 'budget_unknown', '0', '', '0', '0', out, open_until, unknown }
end

if not bg_check(REQ.holds, REQ.lease_id) then
  flush()
  return { 'budget_exceeded', '0', '', '0', '0', out, open_until, bg_left(REQ.holds, REQ.lease_id) }
end

-- Dry run of the choice first so a refusal takes nothing.
local chosen, _, retry, had_capacity = select_deployment(
  REQ.lease_id, REQ.lease_ttl_s, REQ.candidates, REQ.deployment_cfg, out, open_until, false)
if chosen == nil then
  if not had_capacity then
    return refuse('no_deployment', retry)
  end
  -- The committing pass refuses too (nothing admits), applying time-driven transitions.
  _, _, retry = select_deployment(
    REQ.lease_id, REQ.lease_ttl_s, REQ.candidates, REQ.deployment_cfg, out, open_until, true)
  return refuse('circuit_open', retry)
end

local agent_probe = false
if agent ~= nil then
  _, agent_probe = br_acquire(agent, REQ.agent_cfg, out)
end
local deployment_probe
chosen, deployment_probe = select_deployment(
  REQ.lease_id, REQ.lease_ttl_s, REQ.candidates, REQ.deployment_cfg, out, open_until, true)
rl_take(REQ.limits, REQ.lease_id)
local remaining = bg_take(REQ.holds, REQ.lease_id, REQ.lease_ttl_s)
flush()
local record_id = ''
if REQ.record ~= nil then
  local r = REQ.record
  record_id = redis.call('XADD', r.stream, 'MAXLEN', '~', r.maxlen, '*', r.field, BLOB)
end
return {
  '', '0', id_or_empty(chosen), flag(agent_probe), flag(deployment_probe), out, open_until,
  remaining, record_id,
}
