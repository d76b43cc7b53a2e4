-- budget_usage. REQ: {keys: [...]}. Returns {spent, reserved, refused, rmin, ready} per key, in
-- order, in micro-USD (expired reservations are spent first, as on every read).
local usage = {}
for i, key in ipairs(REQ.keys) do
  local w = bg_state(key, nil)
  local more = redis.call('HMGET', w.h, 'refused', 'rmin')
  usage[i] = {
    int(w.spent), int(w.reserved), int(tonumber(more[1]) or 0), int(tonumber(more[2]) or 0),
    w.ready and '1' or '0',
  }
end
return usage
