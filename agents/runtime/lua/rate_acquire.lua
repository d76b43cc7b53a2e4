-- rate_acquire: all limits or none. REQ: {entry_id, limits: [{key, limit, window_s, cost}]}.
-- Returns {allowed, retry_after}.
local wait = rl_check(REQ.limits)
if wait > 0 then
  flush()
  return { '0', num(wait) }
end
rl_take(REQ.limits, REQ.entry_id)
return { '1', '0' }
