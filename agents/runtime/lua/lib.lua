-- Shared library of the RedisState calls (agents/runtime/redis_state.py), loaded once into Redis
-- as a function library: each entry point (agents/runtime/lua/<name>.lua) becomes a function
-- that starts with begin(args), run by FCALL as one atomic unit. (Where Redis Functions are
-- missing, each call is this file + begin(ARGV) + the entry point, run by EVALSHA.) The logic
-- mirrors agents/runtime/memory/ line for line; keep the two in step.
--
-- args[1] key prefix, args[2] now (epoch seconds as a string, or "" to read Redis TIME),
-- args[3] extra TTL seconds (slack for an injected clock), args[4] the call as JSON, args[5]
-- (admit only, optional) the value of the stream entry REQ.record describes, kept out of the
-- JSON so that it is neither escaped nor decoded here.
--
-- Keys (P = prefix .. ":"):
--   P.."br:"..key        hash   breaker: mode state consecutive failures slow open_until
--                               probes_issued probes_ok probe_deadline, and w: the outcome
--                               window as a string, oldest first, one digit per call (0 ok,
--                               1 failed, +2 slow). No TTL: it is state.
--   P.."rl:"..key        zset   rate-log entries: member entry_id, score = admitted at
--   P.."rl:"..key..":h"  hash   total, exp (the time the keys are kept until), "c:"..entry_id -> cost
--   P.."lease:"..id      zset   in-flight leases of a deployment: member lease_id, score expiry
--   P.."bg:"..key        hash   budget window (key = "budget:<id>:<window>"): spent, reserved (the
--                               sum of the live "r:" fields), exp, ep (present once budget_prepare
--                               wrote the window: its spend is complete), refused, rmin (the
--                               smallest amount refused), "r:"..entry_id -> amount reserved
--   P.."bg:"..key..":x"  zset   its reservations: member entry_id, score expiry
--   P.."bg:"..key..":o"  hash   settlements that found the window gone: entry_id -> actual
--   P.."gone:"..lease_id string an abandoned lease id (abandon.lua): admission under it takes
--                               nothing
--
-- Cost per call is mostly the number of redis.call()s (a few µs each), so each entry point reads
-- a key once (the per-call caches BREAKERS, RATES, LOADS, BUDGETS), writes it once, and renews a
-- TTL only when the key would otherwise expire too early: "exp" remembers how long the keys are
-- kept, and a renewal keeps them a second longer than needed, so that a busy key is renewed about
-- once a second rather than on every call.
--
-- Money is integer micro-USD: Lua numbers are doubles, exact for integers below 2^53 (9e15, i.e.
-- $9e9; limits stay below $1e8), printed by int() as plain integers, which HINCRBY takes.
--
-- Numbers cross the Lua/Redis boundary as strings formatted with %.17g: Lua's own tostring keeps
-- only 14 significant digits (epoch seconds with a fraction need 16), and Redis truncates Lua
-- numbers in replies to integers.

-- Per call: set by begin(). The caches hold what this call has read (see the Keys note).
local P, NOW, NOW_TEXT, SLACK, REQ, BLOB
local BREAKERS, RATES, LOADS, BUDGETS

-- math.floor and string.format, bound by begin(): the libraries are not there while loading.
local floor, format

local function begin(args)
  floor, format = math.floor, string.format
  P = args[1] .. ':'
  if args[2] == '' then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
  else
    NOW = tonumber(args[2])
  end
  NOW_TEXT = nil -- num(NOW), formatted once per call when first needed (now_text)
  SLACK = tonumber(args[3])
  REQ = cjson.decode(args[4])
  BLOB = args[5]
  BREAKERS, RATES, LOADS, BUDGETS = {}, {}, {}, {}
end

local FAIL = 1
local SLOW = 2
local OUTCOME_FAILURE = 1
local OUTCOME_IGNORED = 2
local INF = 1 / 0 -- (math.huge: the math library is not there while a function library loads)
local CHUNK = 500

-- Whole numbers (counts, tokens, micro-USD: most of what is written) take '%d', several times
-- cheaper than '%.17g' here; both print them the same.
local function num(x)
  if x == floor(x) and x > -9007199254740992 and x < 9007199254740992 then
    return format('%d', x)
  end
  return format('%.17g', x)
end

local function now_text()
  if NOW_TEXT == nil then
    NOW_TEXT = num(NOW)
  end
  return NOW_TEXT
end

local function ttl_ms(seconds)
  return math.max(1, math.ceil((seconds + SLACK) * 1000))
end

-- Transitions are appended to a flat list: key, from, to, at, reason.
local function transition(out, key, from, to, reason)
  out[#out + 1] = key
  out[#out + 1] = from
  out[#out + 1] = to
  out[#out + 1] = now_text()
  out[#out + 1] = reason
end

-- ---------------------------------------------------------------------------------------------
-- Breakers
-- ---------------------------------------------------------------------------------------------

local function breaker(key)
  local b = BREAKERS[key]
  if b then
    return b
  end
  local hk = P .. 'br:' .. key
  b = {
    key = key, hk = hk, dirty = false,
    mode = 'auto', state = 'closed', consecutive = 0, failures = 0, slow = 0, open_until = 0,
    probes_issued = 0, probes_ok = 0, probe_deadline = 0, w = '',
  }
  local raw = redis.call('HGETALL', hk)
  local has_window = false
  for i = 1, #raw, 2 do
    local field, value = raw[i], raw[i + 1]
    if field == 'mode' or field == 'state' or field == 'w' then
      b[field] = value
      has_window = has_window or field == 'w'
    else
      b[field] = tonumber(value)
    end
  end
  if #raw > 0 and not has_window then
    -- Written by a version that kept the window in a list (hk..':w'): start the window afresh.
    b.failures = 0
    b.slow = 0
    b.dirty = true
    redis.call('DEL', hk .. ':w')
  end
  BREAKERS[key] = b
  return b
end

-- Writes what this call changed; every entry point that changes state ends with it.
local function flush()
  for _, b in pairs(BREAKERS) do
    if b.dirty then
      redis.call('HSET', b.hk,
        'mode', b.mode, 'state', b.state, 'consecutive', num(b.consecutive),
        'failures', num(b.failures), 'slow', num(b.slow), 'open_until', num(b.open_until),
        'probes_issued', num(b.probes_issued), 'probes_ok', num(b.probes_ok),
        'probe_deadline', num(b.probe_deadline), 'w', b.w)
      b.dirty = false
    end
  end
  for _, r in pairs(RATES) do
    if r.dirty then
      redis.call('HSET', r.h, 'total', num(r.total))
      r.dirty = false
    end
  end
end

local MODE_STATE = { forced_open = 'forced_open', forced_closed = 'forced_closed', disabled = 'disabled' }

local function effective(b)
  return MODE_STATE[b.mode] or b.state
end

local function clear_counts(b)
  b.consecutive = 0
  b.w = ''
  b.failures = 0
  b.slow = 0
  b.probes_issued = 0
  b.probes_ok = 0
  b.dirty = true
end

local function br_open(b, cfg, reason, out)
  local before = b.state
  b.state = 'open'
  b.open_until = NOW + cfg.recovery_timeout_s
  clear_counts(b)
  transition(out, b.key, before, 'open', reason)
end

local function br_half_open(b, cfg, out)
  b.state = 'half_open'
  b.probes_issued = 0
  b.probes_ok = 0
  b.probe_deadline = NOW + cfg.probe_timeout_s
  b.dirty = true
  transition(out, b.key, 'open', 'half_open', 'recovery timeout')
end

local function br_close(b, reason, out)
  local before = b.state
  b.state = 'closed'
  b.open_until = 0
  clear_counts(b)
  transition(out, b.key, before, 'closed', reason)
end

-- Would acquire admit? No mutation. Returns allowed, retry_after.
local function br_peek(b, cfg)
  if b.mode == 'forced_open' then
    return false, cfg.recovery_timeout_s
  end
  if b.mode == 'forced_closed' or b.mode == 'disabled' then
    return true, 0
  end
  if b.state == 'open' then
    if NOW < b.open_until then
      return false, b.open_until - NOW
    end
    return true, 0 -- would move to half-open and take the first probe
  end
  if b.state == 'half_open' then
    if b.probes_issued < cfg.half_open_max_calls then
      return true, 0
    end
    if NOW >= b.probe_deadline then
      return false, cfg.recovery_timeout_s
    end
    return false, math.max(0, b.probe_deadline - NOW)
  end
  return true, 0
end

-- Returns allowed, probe, retry_after; appends transitions to out.
local function br_acquire(b, cfg, out)
  if b.mode == 'forced_open' then
    return false, false, cfg.recovery_timeout_s
  end
  if b.mode == 'forced_closed' or b.mode == 'disabled' then
    return true, false, 0
  end
  if b.state == 'open' then
    if NOW < b.open_until then
      return false, false, b.open_until - NOW
    end
    br_half_open(b, cfg, out)
  end
  if b.state == 'half_open' then
    if b.probes_issued < cfg.half_open_max_calls then
      b.probes_issued = b.probes_issued + 1
      b.dirty = true
      return true, true, 0
    end
    if NOW >= b.probe_deadline then
      br_open(b, cfg, 'half-open probes timed out', out)
      return false, false, cfg.recovery_timeout_s
    end
    return false, false, math.max(0, b.probe_deadline - NOW)
  end
  return true, false, 0
end

local function br_record(b, cfg, outcome, duration_s, probe, out)
  if b.mode == 'disabled' or b.mode == 'forced_open' then
    return
  end
  if probe and b.mode == 'auto' and b.state == 'half_open' then
    if outcome == OUTCOME_FAILURE then
      br_open(b, cfg, 'half-open probe failed', out)
      return
    end
    if outcome == OUTCOME_IGNORED then
      b.probes_issued = math.max(0, b.probes_issued - 1) -- the slot is free again
      b.dirty = true
      return
    end
    b.probes_ok = b.probes_ok + 1
    b.dirty = true
    if b.probes_ok >= cfg.half_open_max_calls then
      br_close(b, 'half-open probes succeeded', out)
    end
    return
  end
  local state = effective(b)
  if state ~= 'closed' and state ~= 'forced_closed' then
    return -- a late answer from before the breaker opened changes nothing
  end
  if outcome == OUTCOME_IGNORED then
    return
  end
  local failed = outcome == OUTCOME_FAILURE
  local slow = cfg.slow_call_s ~= nil and duration_s > cfg.slow_call_s
  local code = (failed and FAIL or 0) + (slow and SLOW or 0)
  local before_w, before_consecutive = b.w, b.consecutive
  if failed then
    b.consecutive = b.consecutive + 1
  else
    b.consecutive = 0
  end
  b.w = b.w .. code
  if failed then
    b.failures = b.failures + 1
  end
  if slow then
    b.slow = b.slow + 1
  end
  while #b.w > cfg.window_size do
    local old = tonumber(string.sub(b.w, 1, 1))
    b.w = string.sub(b.w, 2)
    b.failures = b.failures - (old % 2)
    b.slow = b.slow - math.floor(old / 2)
  end
  -- A healthy breaker with a full window of successes does not change: nothing to write.
  b.dirty = b.dirty or b.w ~= before_w or b.consecutive ~= before_consecutive
  if b.mode ~= 'auto' then
    return
  end
  if b.consecutive >= cfg.failure_threshold then
    br_open(b, cfg, string.format('%d consecutive failures', b.consecutive), out)
    return
  end
  local calls = #b.w
  if calls >= cfg.minimum_calls then
    if b.failures / calls >= cfg.failure_rate_threshold then
      br_open(b, cfg, string.format('failure rate %d/%d', b.failures, calls), out)
      return
    end
    if cfg.slow_call_s ~= nil and b.slow / calls >= cfg.slow_call_rate_threshold then
      br_open(b, cfg, string.format('slow-call rate %d/%d', b.slow, calls), out)
      return
    end
  end
end

local ACTION_MODE = { force_open = 'forced_open', force_close = 'forced_closed', disable = 'disabled' }

local function br_command(b, action, out)
  local before = effective(b)
  if action == 'reset' then
    b.mode = 'auto'
    b.state = 'closed'
    b.open_until = 0
    clear_counts(b)
  else
    b.mode = ACTION_MODE[action]
  end
  b.dirty = true
  local after = effective(b)
  if before ~= after then
    transition(out, b.key, before, after, 'operator ' .. action)
  end
end

-- ---------------------------------------------------------------------------------------------
-- Rate limits: exact sliding logs
-- ---------------------------------------------------------------------------------------------

local function rl_keys(key)
  local z = P .. 'rl:' .. key
  return z, z .. ':h'
end

-- The cost fields of entry ids list[first..last].
local function cost_fields(list, first, last)
  local fields = {}
  for i = first, last do
    fields[#fields + 1] = 'c:' .. list[i]
  end
  return fields
end

local function sum_numbers(values, from)
  local total = 0
  for i = from, #values do
    total = total + (tonumber(values[i]) or 0)
  end
  return total
end

-- The log of `key` as this call sees it: entries admitted at or before now - window_s (an entry
-- lives for exactly window_s) are dropped first. Read once per call: {z, h, total, exp, dirty}
-- (dirty: the pruned total is not written yet; flush() or rl_take writes it).
local function rl_state(key, window_s)
  local r = RATES[key]
  if r then
    return r
  end
  local z, h = rl_keys(key)
  local cutoff = num(NOW - window_s)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  local first = math.min(#old, CHUNK)
  local fields = cost_fields(old, 1, first)
  local head = redis.call('HMGET', h, 'total', 'exp', unpack(fields))
  r = { z = z, h = h, total = tonumber(head[1]) or 0, exp = tonumber(head[2]) or 0, dirty = false }
  if #old > 0 then
    local freed = sum_numbers(head, 3)
    redis.call('HDEL', h, unpack(fields))
    for from = first + 1, #old, CHUNK do
      local more = cost_fields(old, from, math.min(#old, from + CHUNK - 1))
      freed = freed + sum_numbers(redis.call('HMGET', h, unpack(more)), 1)
      redis.call('HDEL', h, unpack(more))
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    r.total = r.total - freed
    r.dirty = true
  end
  RATES[key] = r
  return r
end

-- How long until `cost` fits: walk the log oldest first until enough has expired.
local function rl_retry_after(key, window_s, limit, cost, total)
  if cost > limit then
    return INF
  end
  local z, h = rl_keys(key)
  local freed = 0
  local start = 0
  while true do
    local page = redis.call('ZRANGE', z, start, start + CHUNK - 1, 'WITHSCORES')
    if #page == 0 then
      break
    end
    local members = {}
    for i = 1, #page, 2 do
      members[#members + 1] = page[i]
    end
    local costs = redis.call('HMGET', h, unpack(cost_fields(members, 1, #members)))
    for i = 1, #members do
      freed = freed + (tonumber(costs[i]) or 0)
      if total - freed + cost <= limit then
        return math.max(0, tonumber(page[2 * i]) + window_s - NOW)
      end
    end
    start = start + CHUNK
  end
  return window_s
end

-- 0 when every limit admits its cost, else the longest wait.
local function rl_check(limits)
  local wait = 0
  for _, l in ipairs(limits) do
    local total = rl_state(l.key, l.window_s).total
    if total + l.cost > l.limit then
      wait = math.max(wait, rl_retry_after(l.key, l.window_s, l.limit, l.cost, total))
    end
  end
  return wait
end

-- Call after rl_check (which read and pruned the logs).
local function rl_take(limits, entry_id)
  for _, l in ipairs(limits) do
    local r = rl_state(l.key, l.window_s)
    local field = 'c:' .. entry_id
    if redis.call('ZADD', r.z, now_text(), entry_id) == 0 then
      -- A reused entry id replaces its entry (ids are execution ids: unique in practice).
      r.total = r.total - (tonumber(redis.call('HGET', r.h, field)) or 0)
    end
    r.total = r.total + l.cost
    r.dirty = false
    if NOW + l.window_s > r.exp then
      r.exp = NOW + l.window_s + 1
      redis.call('HSET', r.h, field, num(l.cost), 'total', num(r.total), 'exp', num(r.exp))
      local ms = ttl_ms(r.exp - NOW)
      redis.call('PEXPIRE', r.z, ms)
      redis.call('PEXPIRE', r.h, ms)
    else
      redis.call('HSET', r.h, field, num(l.cost), 'total', num(r.total))
    end
  end
end

-- Replace the cost reserved under entry_id with the real one. An entry past its window but not
-- pruned yet may change too: it no longer counts, and the prune frees what it holds then.
local function rl_settle(key, entry_id, cost)
  local _, h = rl_keys(key)
  local field = 'c:' .. entry_id
  local got = redis.call('HMGET', h, field, 'total')
  local old = tonumber(got[1])
  if old == nil then
    return
  end
  redis.call('HSET', h, field, num(cost), 'total', num((tonumber(got[2]) or 0) + cost - old))
end

-- ---------------------------------------------------------------------------------------------
-- In-flight leases and deployment choice
-- ---------------------------------------------------------------------------------------------

local function lease_key(deployment_id)
  return P .. 'lease:' .. string.format('%d', deployment_id)
end

-- LOADS: live leases per deployment as this call sees them (expired ones dropped on first read).

local function load(deployment_id)
  local n = LOADS[deployment_id]
  if n then
    return n
  end
  local k = lease_key(deployment_id)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now_text())
  n = redis.call('ZCARD', k)
  LOADS[deployment_id] = n
  return n
end

-- The key lives as long as its longest lease: a new one (no live lease: ZREMRANGEBYSCORE
-- deleted the emptied key) gets this lease's TTL, an existing one is only ever extended (GT).
local function lease_take(deployment_id, lease_id, lease_ttl_s)
  local k = lease_key(deployment_id)
  local current = load(deployment_id)
  local added = redis.call('ZADD', k, num(NOW + lease_ttl_s), lease_id)
  if current == 0 then
    redis.call('PEXPIRE', k, ttl_ms(lease_ttl_s))
  else
    redis.call('PEXPIRE', k, ttl_ms(lease_ttl_s), 'GT')
  end
  LOADS[deployment_id] = current + added
end

local function lease_drop(deployment_id, lease_id)
  redis.call('ZREM', lease_key(deployment_id), lease_id)
  LOADS[deployment_id] = nil
end

-- A number in [0, 1) read from the lease id's first 8 hex digits (lease ids are execution ids,
-- random UUIDs); 0 for ids that do not start so. The same as memory/store.py's spread().
local function spread(lease_id)
  local hex = string.match(lease_id, '^%x%x%x%x%x%x%x%x')
  if hex == nil then
    return 0
  end
  return tonumber(hex, 16) / 4294967296
end

-- By least weighted load. Returns deployment_id (or nil), probe, retry_after, any_had_capacity.
-- With commit, the chosen deployment's breaker is acquired and its lease taken; refused
-- candidates go through acquire too (time-driven transitions) and report open-until times.
local function select_deployment(lease_id, lease_ttl_s, candidates, cfg, out, open_until, commit)
  local ranked = {}
  for _, c in ipairs(candidates) do
    local current = load(c.id)
    ranked[#ranked + 1] = { c = c, load = current, ratio = current / c.weight }
  end
  table.sort(ranked, function(a, b)
    if a.ratio ~= b.ratio then
      return a.ratio < b.ratio
    end
    if a.c.weight ~= b.c.weight then
      return a.c.weight > b.c.weight
    end
    return a.c.id < b.c.id
  end)
  -- Equally loaded (always, at low traffic): pick by weight, with the lease id as the die, so
  -- that weights hold at any concurrency. memory/store.py does exactly the same.
  local tied = 1
  while tied < #ranked and ranked[tied + 1].ratio == ranked[1].ratio do
    tied = tied + 1
  end
  if tied > 1 then
    local total = 0
    for i = 1, tied do
      total = total + ranked[i].c.weight
    end
    local point = spread(lease_id) * total
    for i = 1, tied do
      point = point - ranked[i].c.weight
      if point < 0 then
        table.insert(ranked, 1, table.remove(ranked, i))
        break
      end
    end
  end
  local wait = INF
  local had_capacity = false
  for _, r in ipairs(ranked) do
    local c = r.c
    if r.load < c.max_concurrency then
      had_capacity = true
      local b = breaker(c.key)
      if not commit then
        local allowed, retry = br_peek(b, cfg)
        if allowed then
          return c.id, false, 0, true
        end
        wait = math.min(wait, retry)
      else
        local allowed, probe, retry = br_acquire(b, cfg, out)
        if allowed then
          lease_take(c.id, lease_id, lease_ttl_s)
          return c.id, probe, 0, true
        end
        wait = math.min(wait, retry)
        if b.state == 'open' then
          open_until[#open_until + 1] = c.key
          open_until[#open_until + 1] = num(b.open_until)
        end
      end
    end
  end
  if wait == INF then
    wait = 0
  end
  return nil, false, wait, had_capacity
end

local function flag(value)
  return value and '1' or '0'
end

local function id_or_empty(value)
  if value == nil then
    return ''
  end
  return string.format('%d', value)
end

-- ---------------------------------------------------------------------------------------------
-- Budgets: settled spend plus reservations that expire with their execution's lease
-- ---------------------------------------------------------------------------------------------

-- An integer amount as HINCRBY takes it: %.17g would print a negated zero as "-0".
local function int(x)
  if x == 0 then
    return '0'
  end
  return num(x)
end

local function bg_keys(key)
  local h = P .. 'bg:' .. key
  return h, h .. ':x'
end

-- The window `key` as this call sees it: the reservations whose expiry is at or before now (a
-- dead process's, or one whose settlement never arrived) are spent first: the process that held
-- them never said what it spent. Read once per call: {h, x, spent, reserved, exp, mine, ready}
-- (mine: what entry_id holds already; a top-up adds to it. ready: the window was written by
-- budget_prepare, so its spend is complete; a missing window is not).

local function bg_state(key, entry_id)
  local w = BUDGETS[key]
  if w then
    return w
  end
  local h, x = bg_keys(key)
  local old = redis.call('ZRANGEBYSCORE', x, '-inf', now_text())
  if #old > 0 then
    local freed = 0
    for first = 1, #old, CHUNK do
      local fields = {}
      for i = first, math.min(#old, first + CHUNK - 1) do
        fields[#fields + 1] = 'r:' .. old[i]
      end
      freed = freed + sum_numbers(redis.call('HMGET', h, unpack(fields)), 1)
      redis.call('HDEL', h, unpack(fields))
    end
    redis.call('ZREMRANGEBYSCORE', x, '-inf', now_text())
    if freed ~= 0 then
      redis.call('HINCRBY', h, 'reserved', int(-freed))
      redis.call('HINCRBY', h, 'spent', int(freed))
    end
  end
  local got = redis.call('HMGET', h, 'spent', 'reserved', 'exp', 'ep', 'r:' .. (entry_id or ''))
  w = {
    h = h, x = x, spent = tonumber(got[1]) or 0, reserved = tonumber(got[2]) or 0,
    exp = tonumber(got[3]) or 0, ready = got[4] ~= false, mine = tonumber(got[5]) or 0,
  }
  BUDGETS[key] = w
  return w
end

-- The hold keys whose windows are not ready (admission refuses them as budget_unknown).
local function bg_unknown(holds, entry_id)
  local unknown = {}
  for _, hold in ipairs(holds) do
    if not bg_state(hold.key, entry_id).ready then
      unknown[#unknown + 1] = hold.key
    end
  end
  return unknown
end

-- A refusal of `amount` on a ready window: counted, and the smallest amount refused kept (the
-- budget cannot admit a call that size any more).
local function bg_refuse(w, amount)
  redis.call('HINCRBY', w.h, 'refused', 1)
  local least = tonumber(redis.call('HGET', w.h, 'rmin'))
  if least == nil or amount < least then
    redis.call('HSET', w.h, 'rmin', int(amount))
  end
end

-- Every hold fits: its window is ready and spent + live reservations + amount <= limit. Takes
-- nothing; counts a refusal on each ready window that does not fit.
local function bg_check(holds, entry_id)
  local ok = true
  for _, hold in ipairs(holds) do
    local w = bg_state(hold.key, entry_id)
    if not w.ready then
      ok = false
    elseif w.spent + w.reserved + hold.amount > hold.limit then
      ok = false
      bg_refuse(w, hold.amount)
    end
  end
  return ok
end

-- Flat key, remaining (limit - spent - reserved) pairs, in the order of the holds.
local function bg_left(holds, entry_id)
  local left = {}
  for _, hold in ipairs(holds) do
    local w = bg_state(hold.key, entry_id)
    left[#left + 1] = hold.key
    left[#left + 1] = int(hold.limit - w.spent - w.reserved)
  end
  return left
end

-- Add each hold's amount to entry_id's reservation (a top-up adds up), which now expires at
-- now + ttl_s; the window's keys live at least hold.ttl_s from this write. Returns bg_left's
-- pairs. Call after bg_check (same entry_id), which read and pruned the windows.
local function bg_take(holds, entry_id, ttl_s)
  for _, hold in ipairs(holds) do
    local w = bg_state(hold.key, entry_id)
    w.mine = w.mine + hold.amount
    w.reserved = w.reserved + hold.amount
    redis.call('ZADD', w.x, num(NOW + ttl_s), entry_id)
    if NOW + hold.ttl_s > w.exp then
      w.exp = NOW + hold.ttl_s + 1
      redis.call('HSET', w.h, 'r:' .. entry_id, int(w.mine), 'reserved', int(w.reserved),
        'exp', num(w.exp))
      local ms = ttl_ms(w.exp - NOW)
      redis.call('PEXPIRE', w.h, ms)
      redis.call('PEXPIRE', w.x, ms)
    else
      redis.call('HSET', w.h, 'r:' .. entry_id, int(w.mine), 'reserved', int(w.reserved))
    end
  end
  return bg_left(holds, entry_id)
end

-- entry_id's reservation becomes spend: it is dropped and `actual` is added to spent. Without
-- it (settled already, or expired into spend) nothing changes: a settlement sent twice counts
-- once, and a settlement never recreates a window that is gone. A settlement into a window that
-- is gone (lost, not rebuilt yet) is remembered for ORPHAN_S in <window>:o, so that the rebuild
-- counts it as spent rather than restoring the execution's reservation from a stale record.
local ORPHAN_S = 3600
local function bg_settle(key, entry_id, actual)
  local h, x = bg_keys(key)
  local field = 'r:' .. entry_id
  local got = redis.call('HMGET', h, field, 'spent', 'reserved', 'ep')
  local amount = tonumber(got[1])
  if amount == nil then
    if got[4] == false then
      local o = h .. ':o'
      redis.call('HSET', o, entry_id, int(math.max(0, actual)))
      redis.call('PEXPIRE', o, ttl_ms(ORPHAN_S))
    end
    return
  end
  redis.call('HDEL', h, field)
  redis.call('ZREM', x, entry_id)
  redis.call('HSET', h, 'spent', int((tonumber(got[2]) or 0) + math.max(0, actual)),
    'reserved', int((tonumber(got[3]) or 0) - amount))
end

-- Remove entry_id from the rate log of `key` (an abandoned admission gives its budget back).
local function rl_remove(key, entry_id)
  local z, h = rl_keys(key)
  local field = 'c:' .. entry_id
  local got = redis.call('HMGET', h, field, 'total')
  local cost = tonumber(got[1])
  if cost == nil then
    return
  end
  redis.call('ZREM', z, entry_id)
  redis.call('HDEL', h, field)
  redis.call('HSET', h, 'total', num((tonumber(got[2]) or 0) - cost))
end

local function gone_key(lease_id)
  return P .. 'gone:' .. lease_id
end
