-- in_flight. REQ: {deployment_ids: [...]}. Returns the live lease counts, in order.
local counts = {}
for i, id in ipairs(REQ.deployment_ids) do
  counts[i] = load(id)
end
return counts
