-- breaker_snapshot. REQ: {key}. Read only.
-- Returns {state, consecutive, window_calls, window_failures, window_slow, open_until or "",
--          probes_in_flight}.
local b = breaker(REQ.key)
local state = effective(b)
local open_until = ''
if state == 'open' and b.open_until > NOW then
  open_until = num(b.open_until)
end
local probes = 0
if state == 'half_open' then
  probes = b.probes_issued - b.probes_ok
end
return { state, num(b.consecutive), num(#b.w), num(b.failures), num(b.slow), open_until,
  num(probes) }
