-- breaker_snapshot. REQ: {key}. Read only.
-- Returns {state, consecutive, window_calls, window_failures, window_slow, open_until or "",
--          probes_in_flight}.
-- The effective state: an open breaker past its recovery time is reported half_open (the next
-- acquire moves it there and takes a probe), so an open one always has its open_until.
local b = breaker(REQ.key)
local state = effective(b)
local open_until = ''
local probes = 0
if state == 'open' then
  if b.open_until > NOW then
    open_until = num(b.open_until)
  else
    state = 'half_open'
  end
elseif state == 'half_open' then
  probes = b.probes_issued - b.probes_ok
end
return { state, num(b.consecutive), num(#b.w), num(b.failures), num(b.slow), open_until,
  num(probes) }
