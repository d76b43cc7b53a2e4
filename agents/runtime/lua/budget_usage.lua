-- budget_usage. REQ: {keys: [...]}. Returns {spent, reserved} per key, in order, in micro-USD
-- (expired reservations are pruned first, so they are not counted).
local usage = {}
for i, key in ipairs(REQ.keys) do
  local w = bg_state(key, nil)
  usage[i] = { int(w.spent), int(w.reserved) }
end
return usage
