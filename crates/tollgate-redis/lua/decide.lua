-- tollgate: decide a stack of checks atomically (check, peek or give back).
--
-- Why a script: reading the time, reading each key's state, deciding all or nothing
-- and writing the new states must happen with nothing in between, or concurrent
-- callers see the same state and all get through. Redis runs a script atomically.
--
-- KEYS: two per check, in the order of the checks: the state key, then the log key
--   (used by sliding_window_log only; declared always so a cluster sees every key
--   the script may touch; both carry the same hash tag).
-- ARGV[1]: mode: "c" decide and consume, "p" decide without consuming,
--   "g" give back what a "c" call at the instant ARGV[2], ARGV[3] consumed.
-- ARGV[2], ARGV[3]: the instant as Unix seconds and nanoseconds; ARGV[2] empty means
--   "read Redis TIME".
-- ARGV[4]: the least TTL in milliseconds for written keys (0 under Redis TIME; the
--   caller-clock mode sets it so that keys do not expire on the wall clock while a
--   trace still needs them).
-- ARGV[5 + 7(i-1) ...]: per check: algorithm letter (t token_bucket, g gcra,
--   k leaky_bucket, f fixed_window, c sliding_window_counter, l sliding_window_log),
--   L, W, B, T, tau (nanoseconds), cost.
--
-- Returns: { seconds, nanoseconds of the instant used, then per check: allowed (0/1),
--   remaining, reset_after, retry_after (-1 for none), delay, reason (0 none,
--   1 limited, 2 cost_exceeds_capacity), and what the key holds at that instant
--   without this request: remaining, reset_after }. Durations are integer
--   nanoseconds. Mode "g" returns only the instant. A policy that would have
--   admitted in a denied stack reports what it holds (the last two numbers): the
--   caller picks them, since a stack split over cluster slots is decided by several
--   calls.
--
-- Numbers: Lua numbers are doubles, exact for integers below 2^53. Instants (about
-- 1.8e18 ns) are therefore held as two numbers, seconds and nanoseconds; durations are
-- at most 2^52 ns (the store refuses longer policies), and every product that can pass
-- 2^53 is computed by the exact helpers below. The decisions equal the Rust
-- functions of the tollgate crate bit for bit.

local E9 = 1000000000
local BIG = 9007199254740992 -- 2^53

-- floor(a / b) for integers |a| < 2^53, 0 < b < 2^53.
local function fdiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function fmod(a, b)
  return a - fdiv(a, b) * b
end

-- floor(a * x / w) and (a * x) mod w, for 0 <= a < 2^32 and 0 <= x < w <= 2^52.
local function muldivmod(a, x, w)
  local p = a * x
  if p < BIG then
    local q = fdiv(p, w)
    return q, p - q * w
  end
  local q, r = 0, 0
  local bit = 2147483648
  while bit >= 1 do
    q = q * 2
    r = r * 2
    if r >= w then
      r = r - w
      q = q + 1
    end
    if a >= bit then
      a = a - bit
      r = r + x
      if r >= w then
        r = r - w
        q = q + 1
      end
    end
    bit = bit / 2
  end
  return q, r
end

-- floor(b * w / a) for 0 <= b < 2^32, 0 < a < 2^32, w <= 2^52; BIG or more when the
-- answer is not below 2^53 (callers compare it with numbers below 2^53).
local function muldiv_small(b, w, a)
  local qa = fdiv(w, a)
  local hi = b * qa
  if hi >= BIG then
    return BIG
  end
  local q = muldivmod(b, w - qa * a, a)
  return hi + q
end

-- Instants: s seconds and n nanoseconds, 0 <= n < 1e9.
local function add(s, n, d)
  local m = n + d
  local q = fdiv(m, E9)
  return s + q, m - q * E9
end

local function later(as, an, bs, bn)
  return as > bs or (as == bs and an > bn)
end

-- a - b in nanoseconds; exact whenever the answer is below 2^53 in magnitude.
local function diff(as, an, bs, bn)
  return (as - bs) * E9 + (an - bn)
end

-- (s * 1e9 + n) mod w.
local function imod(s, n, w)
  local r
  if fmod(E9, w) == 0 then
    r = 0
  elseif fmod(w, E9) == 0 then
    r = fmod(s, w / E9) * E9
  else
    local _, m = muldivmod(E9, fmod(s, w), w)
    r = m
  end
  return fmod(r + n, w)
end

-- The start of the window holding the instant.
local function window(s, n, w)
  return add(s, n, -imod(s, n, w))
end

local function decision(allowed, remaining, reset, retry, delay, reason)
  return { allowed, remaining, reset, retry, delay, reason }
end

-- State strings: "b s n" (the bucket family's TAT), "f count s n" (fixed_window; the
-- instant is the last admission), "c prev curr s n" (sliding_window_counter),
-- "l total s n" (sliding_window_log; entries "s n c" in the log key, oldest first).
local function parse(raw)
  if not raw then
    return nil
  end
  local kind = string.sub(raw, 1, 1)
  local f = {}
  for x in string.gmatch(string.sub(raw, 3), "%d+") do
    f[#f + 1] = tonumber(x)
  end
  return kind, f
end

local function family(alg)
  if alg == "t" or alg == "g" or alg == "k" then
    return "b"
  end
  return alg
end

-- Each algorithm answers { decision, view remaining, view reset, write } where write
-- is { state string, ttl ns } or nil, and the view is what the key holds at t
-- without this request.

local function bucket(p, st, ts, tn)
  local T, tau, c = p.T, p.tau, p.c
  local ss, sn, wait = ts, tn, 0
  if st and later(st[1], st[2], ts, tn) then
    ss, sn = st[1], st[2]
    wait = diff(ss, sn, ts, tn)
  end
  local room = tau - wait
  if room < 0 then
    room = 0
  end
  local vrem = fdiv(room, T)
  if c > p.B then
    return decision(0, vrem, wait, -1, 0, 2), vrem, wait
  end
  local ahead = wait + c * T
  if ahead <= tau then
    local delay = 0
    if p.alg == "k" then
      delay = wait
    end
    local ns, nn = add(ss, sn, c * T)
    return decision(1, fdiv(tau - ahead, T), ahead, -1, delay, 0), vrem, wait,
      { string.format("b %d %d", ns, nn), ahead }
  end
  local rem = 0
  if room >= T then
    rem = vrem
  end
  return decision(0, rem, wait, ahead - tau, 0, 1), vrem, wait
end

local function fixed(p, st, ts, tn)
  local W, L, c = p.W, p.L, p.c
  if st and later(st[2], st[3], ts, tn) then
    ts, tn = st[2], st[3]
  end
  local e = imod(ts, tn, W)
  local count = 0
  if st then
    local ks, kn = add(ts, tn, -e)
    local ls, ln = window(st[2], st[3], W)
    if ks == ls and kn == ln then
      count = st[1]
    end
  end
  local reset = W - e
  local vrem = L - count
  if vrem < 0 then
    vrem = 0
  end
  if c > L then
    return decision(0, vrem, reset, -1, 0, 2), vrem, reset
  end
  if count + c <= L then
    return decision(1, L - count - c, reset, -1, 0, 0), vrem, reset,
      { string.format("f %d %d %d", count + c, ts, tn), reset }
  end
  return decision(0, vrem, reset, reset, 0, 1), vrem, reset
end

local function counter(p, st, ts, tn)
  local W, L, c = p.W, p.L, p.c
  if st and later(st[3], st[4], ts, tn) then
    ts, tn = st[3], st[4]
  end
  local e = imod(ts, tn, W)
  local prev, curr = 0, 0
  if st then
    local ks, kn = add(ts, tn, -e)
    local ls, ln = window(st[3], st[4], W)
    local d = diff(ks, kn, ls, ln)
    if d == 0 then
      prev, curr = st[1], st[2]
    elseif d == W then
      prev, curr = st[2], 0
    end
  end
  local function remaining(cu)
    local q = muldivmod(prev, e, W)
    local r = L - cu - (prev - q)
    if r < 0 then
      return 0
    end
    return r
  end
  local function reset(cu)
    if cu > 0 then
      return 2 * W - e
    elseif prev > 0 then
      return W - e
    end
    return 0
  end
  local vrem, vreset = remaining(curr), reset(curr)
  if c > L then
    return decision(0, vrem, vreset, -1, 0, 2), vrem, vreset
  end
  local r = L - curr - c
  if r >= 0 and (prev == 0 or W - e <= muldiv_small(r, W, prev)) then
    local cu = curr + c
    return decision(1, remaining(cu), reset(cu), -1, 0, 0), vrem, vreset,
      { string.format("c %d %d %d %d", prev, cu, ts, tn), 2 * W - e }
  end
  local retry = nil
  if r >= 0 then
    if prev == 0 then
      retry = 0
    else
      local x = W - e
      local d = x - muldiv_small(r, W, prev)
      if d < 0 then
        d = 0
      end
      if d < x then
        retry = d
      end
    end
  end
  if not retry then
    local to_next = W - e
    if curr == 0 then
      retry = to_next
    else
      local e_next = W - muldiv_small(L - c, W, curr)
      if e_next < 0 then
        e_next = 0
      end
      if e_next < W then
        retry = to_next + e_next
      else
        retry = to_next + W
      end
    end
  end
  return decision(0, vrem, vreset, retry, 0, 1), vrem, vreset
end

local function entry(raw)
  local s, n, c = string.match(raw, "(%d+) (%d+) (%d+)")
  return tonumber(s), tonumber(n), tonumber(c)
end

-- Calls f(index, s, n, c) for the log's entries from index `from` (0-based), oldest
-- first, until f returns true.
local function walk(lkey, from, f)
  local i = from
  while true do
    local batch = redis.call("LRANGE", lkey, i, i + 31)
    for _, raw in ipairs(batch) do
      local s, n, c = entry(raw)
      if f(i, s, n, c) then
        return
      end
      i = i + 1
    end
    if #batch < 32 then
      return
    end
  end
end

local function log(p, st, ts, tn, lkey)
  local W, L, c = p.W, p.L, p.c
  local total, dead, ndead = 0, 0, 0
  local reset = 0
  if st then
    total = st[1]
    if later(st[2], st[3], ts, tn) then
      ts, tn = st[2], st[3]
    end
    if total > 0 then
      reset = diff(st[2], st[3], ts, tn) + W
      if reset < 0 then
        reset = 0
      end
      walk(lkey, 0, function(_, s, n, n_c)
        if diff(ts, tn, s, n) >= W then
          dead = dead + n_c
          ndead = ndead + 1
          return false
        end
        return true
      end)
    end
  end
  local used = total - dead
  local vrem = L - used
  if vrem < 0 then
    vrem = 0
  end
  if c > L then
    return decision(0, vrem, reset, -1, 0, 2), vrem, reset
  end
  if used + c <= L then
    local merge = st and st[2] == ts and st[3] == tn and total - dead > 0
    return decision(1, L - used - c, W, -1, 0, 0), vrem, reset,
      { string.format("l %d %d %d", used + c, ts, tn), W, log = { ndead = ndead, merge = merge, fresh = not st, s = ts, n = tn } }
  end
  local need = used + c - L
  local sum, retry = 0, 0
  walk(lkey, ndead, function(_, s, n, n_c)
    sum = sum + n_c
    if sum >= need then
      retry = diff(s, n, ts, tn) + W
      return true
    end
    return false
  end)
  return decision(0, vrem, reset, retry, 0, 1), vrem, reset
end

local function ttl_ms(ns, least)
  local ms = fdiv(ns + 999999, 1000000) + 1
  if ms < least then
    ms = least
  end
  return ms
end

local function give_back(p, skey, lkey, ts, tn)
  local kind, st = parse(redis.call("GET", skey))
  if kind ~= family(p.alg) then
    return
  end
  local c = p.c
  if kind == "b" then
    local s, n = add(st[1], st[2], -c * p.T)
    redis.call("SET", skey, string.format("b %d %d", s, n), "KEEPTTL")
  elseif kind == "f" then
    local ks, kn = window(ts, tn, p.W)
    local ls, ln = window(st[2], st[3], p.W)
    if ks == ls and kn == ln then
      local count = math.max(st[1] - c, 0)
      redis.call("SET", skey, string.format("f %d %d %d", count, st[2], st[3]), "KEEPTTL")
    end
  elseif kind == "c" then
    local ks, kn = window(ts, tn, p.W)
    local ls, ln = window(st[3], st[4], p.W)
    local d = diff(ls, ln, ks, kn)
    local prev, curr = st[1], st[2]
    if d == 0 then
      curr = math.max(curr - c, 0)
    elseif d == p.W then
      prev = math.max(prev - c, 0)
    else
      return
    end
    redis.call("SET", skey, string.format("c %d %d %d %d", prev, curr, st[3], st[4]), "KEEPTTL")
  elseif kind == "l" then
    local len = redis.call("LLEN", lkey)
    for i = len - 1, 0, -1 do
      local raw = redis.call("LINDEX", lkey, i)
      local s, n, n_c = entry(raw)
      if s == ts and n == tn then
        if n_c > c then
          redis.call("LSET", lkey, i, string.format("%d %d %d", s, n, n_c - c))
        else
          redis.call("LREM", lkey, 1, raw)
        end
        -- The state's instant is the newest admission still in the log, as if the
        -- given-back one had never been.
        local total = math.max(st[1] - math.min(c, n_c), 0)
        local ls, ln = st[2], st[3]
        local tail = redis.call("LINDEX", lkey, -1)
        if tail then
          ls, ln = entry(tail)
        end
        redis.call("SET", skey, string.format("l %d %d %d", total, ls, ln), "KEEPTTL")
        return
      end
      if later(ts, tn, s, n) then
        return
      end
    end
  end
end

local mode = ARGV[1]
local ts, tn
if ARGV[2] == "" then
  local now = redis.call("TIME")
  ts, tn = tonumber(now[1]), tonumber(now[2]) * 1000
else
  ts, tn = tonumber(ARGV[2]), tonumber(ARGV[3])
end
local least = tonumber(ARGV[4])

local checks = {}
for i = 1, (#ARGV - 4) / 7 do
  local b = 4 + 7 * (i - 1)
  checks[i] = {
    alg = ARGV[b + 1],
    L = tonumber(ARGV[b + 2]),
    W = tonumber(ARGV[b + 3]),
    B = tonumber(ARGV[b + 4]),
    T = tonumber(ARGV[b + 5]),
    tau = tonumber(ARGV[b + 6]),
    c = tonumber(ARGV[b + 7]),
  }
end

if mode == "g" then
  for i, p in ipairs(checks) do
    give_back(p, KEYS[2 * i - 1], KEYS[2 * i], ts, tn)
  end
  return { ts, tn }
end

local out = { ts, tn }
local decided = {}
local all = true
for i, p in ipairs(checks) do
  local skey, lkey = KEYS[2 * i - 1], KEYS[2 * i]
  local kind, st = parse(redis.call("GET", skey))
  local fam = family(p.alg)
  if kind ~= fam then
    st = nil
  end
  local d, vrem, vreset, write
  if fam == "b" then
    d, vrem, vreset, write = bucket(p, st, ts, tn)
  elseif fam == "f" then
    d, vrem, vreset, write = fixed(p, st, ts, tn)
  elseif fam == "c" then
    d, vrem, vreset, write = counter(p, st, ts, tn)
  else
    d, vrem, vreset, write = log(p, st, ts, tn, lkey)
  end
  decided[i] = { d = d, vrem = vrem, vreset = vreset, write = write, skey = skey, lkey = lkey }
  if d[1] == 0 then
    all = false
  end
end

for i, x in ipairs(decided) do
  local d = x.d
  if all and mode == "c" then
    local w = x.write
    local ms = ttl_ms(w[2], least)
    if w.log then
      local l = w.log
      if l.fresh then
        redis.call("DEL", x.lkey)
      elseif l.ndead > 0 then
        redis.call("LTRIM", x.lkey, l.ndead, -1)
      end
      local c = checks[i].c
      local s, n, n_c
      if l.merge then
        -- The newest entry is at this instant unless a give-back removed it.
        s, n, n_c = entry(redis.call("LINDEX", x.lkey, -1))
      end
      if s == l.s and n == l.n then
        redis.call("LSET", x.lkey, -1, string.format("%d %d %d", s, n, n_c + c))
      else
        redis.call("RPUSH", x.lkey, string.format("%d %d %d", l.s, l.n, c))
      end
      redis.call("PEXPIRE", x.lkey, ms)
    end
    redis.call("SET", x.skey, w[1], "PX", ms)
  end
  for j = 1, 6 do
    out[#out + 1] = d[j]
  end
  out[#out + 1] = x.vrem
  out[#out + 1] = x.vreset
end
return out
