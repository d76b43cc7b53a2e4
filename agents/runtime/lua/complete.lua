-- complete: release the attempt's lease, record outcomes, settle budgets and rate limits.
-- REQ: {attempt?: {deployment_id, key, lease_id, outcome, duration_s, probe}, deployment_cfg,
--       agent?: {key, cfg, outcome, duration_s, probe}, entry_id,
--       budget_settlements: [{key, actual}], settlements: [{key, window_s, cost}]}
-- Returns the transitions (flat).
local out = {}
local attempt = REQ.attempt
if attempt ~= nil then
  lease_drop(attempt.deployment_id, attempt.lease_id)
  br_record(breaker(attempt.key), REQ.deployment_cfg, attempt.outcome, attempt.duration_s,
    attempt.probe, out)
end
local agent = REQ.agent
if agent ~= nil then
  br_record(breaker(agent.key), agent.cfg, agent.outcome, agent.duration_s, agent.probe, out)
end
for _, s in ipairs(REQ.budget_settlements) do
  bg_settle(s.key, REQ.entry_id, s.actual)
end
for _, s in ipairs(REQ.settlements) do
  rl_settle(s.key, REQ.entry_id, s.cost)
end
flush()
return out
