-- budget_prepare: make budget windows known (rebuilt from the durable ledger by the caller).
-- REQ: {windows: [{key, spent, ttl_s, reservations: [[entry_id, amount, expires_at], ...]}]}.
-- A window already ready is left alone (concurrent rebuilds are harmless). Otherwise it gets
-- spent = the larger of what it holds and `spent` (a rebuild never lowers spend), the given
-- reservations it lacks (one already expired is spent, as bg_state would make it; one whose
-- execution settled while the window was gone is spent at what it settled: see bg_settle), ep,
-- and a TTL of at least ttl_s. Returns the keys written.
local written = {}
for _, win in ipairs(REQ.windows) do
  local w = bg_state(win.key, nil)
  if not w.ready then
    local spent = math.max(w.spent, win.spent)
    local reserved = w.reserved
    local fields = {}
    local orphans = w.h .. ':o'
    for _, r in ipairs(win.reservations) do
      local entry_id, amount, expires_at = r[1], r[2], r[3]
      local settled = tonumber(redis.call('HGET', orphans, entry_id))
      if settled ~= nil then
        -- It settled while the window was gone: its record is behind, its cost is known.
        spent = spent + settled
      elseif redis.call('HEXISTS', w.h, 'r:' .. entry_id) == 0 then
        if expires_at <= NOW then
          spent = spent + amount
        else
          redis.call('ZADD', w.x, num(expires_at), entry_id)
          fields[#fields + 1] = 'r:' .. entry_id
          fields[#fields + 1] = int(amount)
          reserved = reserved + amount
        end
      end
      if #fields >= 2 * CHUNK then
        redis.call('HSET', w.h, unpack(fields))
        fields = {}
      end
    end
    if #fields > 0 then
      redis.call('HSET', w.h, unpack(fields))
    end
    local exp = math.max(w.exp, NOW + win.ttl_s)
    redis.call('HSET', w.h, 'spent', int(spent), 'reserved', int(reserved), 'exp', num(exp),
      'ep', '1')
    local ms = ttl_ms(exp - NOW)
    redis.call('PEXPIRE', w.h, ms)
    if redis.call('EXISTS', w.x) == 1 then
      redis.call('PEXPIRE', w.x, ms)
    end
    written[#written + 1] = win.key
  end
end
return written
