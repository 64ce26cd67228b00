#!lua name=__NAME__
-- tollgate: decide a stack of checks atomically (check, peek or give back).
--
-- A Redis Functions library: loaded once (FUNCTION LOAD), called with FCALL. Its
-- name carries a hash of this file (the store puts it in place of __NAME__), so
-- processes running different tollgate versions never call each other's code.
--
-- Why server-side code: reading the time, reading each key's state, deciding all or
-- nothing and writing the new states must happen with nothing in between, or
-- concurrent callers see the same state and all get through. Redis runs a function
-- atomically.
--
-- FCALL __NAME__ numkeys KEYS... ARGV...
-- KEYS: per check, in the order of the checks: its state key, then for
--   sliding_window_log its log key (both carry the same hash tag).
-- ARGV[1]: mode: "c" decide and consume, "p" decide without consuming,
--   "g" give back what a "c" call at the instant ARGV[2], ARGV[3] consumed.
-- ARGV[2], ARGV[3]: the instant as Unix seconds and nanoseconds; ARGV[2] empty means
--   "read Redis TIME".
-- ARGV[4]: the least TTL in milliseconds for written keys (0 under Redis TIME; the
--   caller-clock mode sets it so that keys do not expire on the wall clock while a
--   trace still needs them).
-- ARGV[5 + 5(i-1) ...]: per check: the algorithm letter (t token_bucket, g gcra,
--   k leaky_bucket, f fixed_window, c sliding_window_counter, l sliding_window_log),
--   then T, tau, B for the bucket family or L, W, 0 for the windows (nanoseconds),
--   then the cost. (Every argument costs Redis time, so only the needed ones go.)
-- Returns: { seconds, nanoseconds of the instant used, then per check: allowed (0/1),
--   remaining, reset_after, retry_after (-1 for none), delay, reason (0 none,
--   1 limited, 2 cost_exceeds_capacity), and what the key holds at that instant
--   without this request: remaining, reset_after }. Durations are integer
--   nanoseconds. Mode "g" returns only the instant. A policy that would have
--   admitted in a denied stack reports what it holds (the last two numbers): the
--   caller picks them, since a stack split over cluster slots is decided by several
--   calls.
--
-- FCALL __NAME___1 numkeys KEYS... ARGV...: exactly one check, the common call.
-- KEYS: its state key, then for sliding_window_log its log key.
-- ARGV[1]: the check in one string, "<mode><algorithm> x y z cost least": mode "s"
--   decide and consume or "q" decide without consuming, the algorithm letter, x y z
--   as ARGV[5 + ...] above (T tau B, or L W 0), the cost, and the least TTL as
--   ARGV[4] above. A store sends few distinct strings, so the function parses each
--   once and keeps it (at most 1024 of them).
-- ARGV[2], ARGV[3] (optional): the instant as Unix seconds and nanoseconds; absent
--   means "read Redis TIME".
-- Returns, for the bucket family, one integer: the wait (how far the TAT is ahead of
--   the instant, 0 when it has passed) if the request was admitted, -(wait + 1) if
--   denied. The whole decision follows from it and the policy, and the caller
--   computes it with the tollgate crate's own function (an array reply costs Redis
--   more than the decision itself). For the windows: the six numbers of the
--   decision, as above without the instant and the view.
--
-- FCALL __NAME___n numkeys KEYS... ARGV...: several independent checks, each decided
-- as __NAME___1 decides it, one after another (a client sends the one-check calls
-- it has in flight together this way: Redis then runs one function call for them,
-- not one each, and the call's own cost is most of a check's).
-- KEYS: each check's keys as for __NAME___1, check after check.
-- ARGV[1]: "t" (one Redis TIME for every check) or "c" (each check's instant follows
--   its description).
-- ARGV[2...]: per check, its description as ARGV[1] of __NAME___1, then with "c"
--   its instant as seconds and nanoseconds.
-- Returns an array of each check's reply as __NAME___1's; a check that fails (a key
--   of another type) has an error in its place, and the others are decided.
--
-- Numbers: Lua numbers are doubles, exact for integers below 2^53. Instants (about
-- 1.8e18 ns) are therefore held as two numbers, seconds and nanoseconds; durations are
-- at most 2^52 ns (the store refuses longer policies), and every product that can pass
-- 2^53 is computed by the exact helpers below. Numbers are written into strings with
-- string.format's %d where a decision writes (cheaper than `..`) and with `..`
-- elsewhere; both are exact for integers below 1e14 (seconds, nanoseconds and counts
-- are). The decisions equal the Rust functions of the tollgate crate bit for bit.
--
-- State strings: "b s n" (the bucket family's TAT), "f count s n" (fixed_window; the
-- instant is the last admission), "c prev curr s n" (sliding_window_counter),
-- "l total s n" (sliding_window_log; entries "s n c" in the log key, oldest first).
-- A state of another family reads as fresh.

local E9 = 1000000000
local BIG = 9007199254740992 -- 2^53

-- Library functions as locals: a global costs a table lookup at every use. The
-- libraries are not there while the library loads, so the entry points bind them on
-- their first call.
local floor, max, min, match, format, tonumber, ipairs

local function bind()
  floor, max, min = math.floor, math.max, math.min
  match, format = string.match, string.format
  tonumber, ipairs = _G.tonumber, _G.ipairs
end

-- floor(a / b) for integers |a| < 2^53, 0 < b < 2^53.
local function fdiv(a, b)
  local q = floor(a / b)
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
  if m >= 0 and m < E9 then
    return s, m
  end
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

local function ttl_ms(ns, least)
  local ms = fdiv(ns + 999999, 1000000) + 1
  if ms < least then
    ms = least
  end
  return ms
end

-- Each algorithm answers: allowed, remaining, reset_after, retry_after, delay,
-- reason, the view (remaining, reset_after without this request), and on admission
-- the state to write, its TTL in nanoseconds and, for the log, what to do to the
-- entries.

-- The bucket family's state at the instant ts, tn: where the next request starts
-- (the TAT, or the instant when the TAT has passed) and how far ahead that is.
local function tat(raw, ts, tn)
  if raw then
    local s, n = match(raw, "^b (%d+) (%d+)$")
    if s then
      s, n = tonumber(s), tonumber(n)
      -- later() and diff(), inline: this is the hot path.
      if s > ts or (s == ts and n > tn) then
        return s, n, (s - ts) * E9 + (n - tn)
      end
    end
  end
  return ts, tn, 0
end

local function bucket(raw, ts, tn, T, tau, B, c, leaky)
  local ss, sn, wait = tat(raw, ts, tn)
  local room = tau - wait
  if room < 0 then
    room = 0
  end
  local vrem = fdiv(room, T)
  if c > B then
    return 0, vrem, wait, -1, 0, 2, vrem, wait
  end
  local ahead = wait + c * T
  if ahead <= tau then
    local delay = 0
    if leaky then
      delay = wait
    end
    local ns, nn = add(ss, sn, c * T)
    return 1, fdiv(tau - ahead, T), ahead, -1, delay, 0, vrem, wait, format("b %d %d", ns, nn), ahead
  end
  local rem = 0
  if room >= T then
    rem = vrem
  end
  return 0, rem, wait, ahead - tau, 0, 1, vrem, wait
end

local function fixed(raw, ts, tn, L, W, c)
  local count, ls, ln = 0, nil, nil
  if raw then
    local k, s, n = match(raw, "^f (%d+) (%d+) (%d+)$")
    if k then
      count, ls, ln = tonumber(k), tonumber(s), tonumber(n)
      if later(ls, ln, ts, tn) then
        ts, tn = ls, ln
      end
    end
  end
  local e = imod(ts, tn, W)
  if ls then
    local ks, kn = add(ts, tn, -e)
    local ws, wn = window(ls, ln, W)
    if ks ~= ws or kn ~= wn then
      count = 0
    end
  end
  local reset = W - e
  local vrem = L - count
  if vrem < 0 then
    vrem = 0
  end
  if c > L then
    return 0, vrem, reset, -1, 0, 2, vrem, reset
  end
  if count + c <= L then
    return 1, L - count - c, reset, -1, 0, 0, vrem, reset, format("f %d %d %d", count + c, ts, tn), reset
  end
  return 0, vrem, reset, reset, 0, 1, vrem, reset
end

local function counter(raw, ts, tn, L, W, c)
  local prev, curr, ls, ln = 0, 0, nil, nil
  if raw then
    local p, q, s, n = match(raw, "^c (%d+) (%d+) (%d+) (%d+)$")
    if p then
      ls, ln = tonumber(s), tonumber(n)
      if later(ls, ln, ts, tn) then
        ts, tn = ls, ln
      end
      prev, curr = tonumber(p), tonumber(q)
    end
  end
  local e = imod(ts, tn, W)
  if ls then
    local ks, kn = add(ts, tn, -e)
    local ws, wn = window(ls, ln, W)
    local d = diff(ks, kn, ws, wn)
    if d == W then
      prev, curr = curr, 0
    elseif d ~= 0 then
      prev, curr = 0, 0
    end
  end
  local gone = muldivmod(prev, e, W)
  local function remaining(cu)
    local r = L - cu - (prev - gone)
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
    return 0, vrem, vreset, -1, 0, 2, vrem, vreset
  end
  local r = L - curr - c
  if r >= 0 and (prev == 0 or W - e <= muldiv_small(r, W, prev)) then
    local cu = curr + c
    return 1, remaining(cu), reset(cu), -1, 0, 0, vrem, vreset,
      format("c %d %d %d %d", prev, cu, ts, tn), 2 * W - e
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
  return 0, vrem, vreset, retry, 0, 1, vrem, vreset
end

local function entry(raw)
  local s, n, c = match(raw, "^(%d+) (%d+) (%d+)$")
  return tonumber(s), tonumber(n), tonumber(c)
end

-- Calls f(s, n, c) for the log's entries from index `from` (0-based), oldest first,
-- until f returns true.
local function walk(lkey, from, f)
  local i = from
  while true do
    local batch = redis.call("LRANGE", lkey, i, i + 31)
    for _, raw in ipairs(batch) do
      local s, n, c = entry(raw)
      if f(s, n, c) then
        return
      end
    end
    if #batch < 32 then
      return
    end
    i = i + 32
  end
end

local function log(raw, ts, tn, L, W, c, lkey)
  local total, dead, ndead, reset = 0, 0, 0, 0
  local ls, ln
  if raw then
    local k, s, n = match(raw, "^l (%d+) (%d+) (%d+)$")
    if k then
      total, ls, ln = tonumber(k), tonumber(s), tonumber(n)
      if later(ls, ln, ts, tn) then
        ts, tn = ls, ln
      end
    end
  end
  if total > 0 then
    reset = diff(ls, ln, ts, tn) + W
    if reset < 0 then
      reset = 0
    end
    walk(lkey, 0, function(s, n, n_c)
      if diff(ts, tn, s, n) >= W then
        dead = dead + n_c
        ndead = ndead + 1
        return false
      end
      return true
    end)
  end
  local used = total - dead
  local vrem = L - used
  if vrem < 0 then
    vrem = 0
  end
  if c > L then
    return 0, vrem, reset, -1, 0, 2, vrem, reset
  end
  if used + c <= L then
    local todo = {
      fresh = not ls,
      ndead = ndead,
      merge = ls and ls == ts and ln == tn and used > 0,
      s = ts,
      n = tn,
      c = c,
    }
    return 1, L - used - c, W, -1, 0, 0, vrem, reset, format("l %d %d %d", used + c, ts, tn), W, todo
  end
  local need = used + c - L
  local sum, retry = 0, 0
  local skip = ndead
  walk(lkey, 0, function(s, n, n_c)
    if skip > 0 then
      skip = skip - 1
      return false
    end
    sum = sum + n_c
    if sum >= need then
      retry = diff(s, n, ts, tn) + W
      return true
    end
    return false
  end)
  return 0, vrem, reset, retry, 0, 1, vrem, reset
end

local function write_log(lkey, todo, ms)
  if todo.fresh then
    redis.call("DEL", lkey)
  elseif todo.ndead > 0 then
    redis.call("LTRIM", lkey, todo.ndead, -1)
  end
  local s, n, n_c
  if todo.merge then
    -- The newest entry is at this instant unless a give-back removed it.
    s, n, n_c = entry(redis.call("LINDEX", lkey, -1))
  end
  if s == todo.s and n == todo.n then
    redis.call("LSET", lkey, -1, s .. " " .. n .. " " .. (n_c + todo.c))
  else
    redis.call("RPUSH", lkey, todo.s .. " " .. todo.n .. " " .. todo.c)
  end
  redis.call("PEXPIRE", lkey, ms)
end

local function give_back(alg, skey, lkey, ts, tn, x, W, c)
  local T = x
  local raw = redis.call("GET", skey)
  if not raw then
    return
  end
  if alg == "t" or alg == "g" or alg == "k" then
    local s, n = match(raw, "^b (%d+) (%d+)$")
    if s then
      s, n = add(tonumber(s), tonumber(n), -c * T)
      redis.call("SET", skey, "b " .. s .. " " .. n, "KEEPTTL")
    end
  elseif alg == "f" then
    local k, s, n = match(raw, "^f (%d+) (%d+) (%d+)$")
    if k then
      local ks, kn = window(ts, tn, W)
      local ls, ln = window(tonumber(s), tonumber(n), W)
      if ks == ls and kn == ln then
        redis.call("SET", skey, "f " .. max(tonumber(k) - c, 0) .. " " .. s .. " " .. n, "KEEPTTL")
      end
    end
  elseif alg == "c" then
    local p, q, s, n = match(raw, "^c (%d+) (%d+) (%d+) (%d+)$")
    if p then
      local ks, kn = window(ts, tn, W)
      local ls, ln = window(tonumber(s), tonumber(n), W)
      local d = diff(ls, ln, ks, kn)
      local prev, curr = tonumber(p), tonumber(q)
      if d == 0 then
        curr = max(curr - c, 0)
      elseif d == W then
        prev = max(prev - c, 0)
      else
        return
      end
      redis.call("SET", skey, "c " .. prev .. " " .. curr .. " " .. s .. " " .. n, "KEEPTTL")
    end
  else
    local k = match(raw, "^l (%d+) %d+ %d+$")
    if not k then
      return
    end
    local len = redis.call("LLEN", lkey)
    for i = len - 1, 0, -1 do
      local e = redis.call("LINDEX", lkey, i)
      local s, n, n_c = entry(e)
      if s == ts and n == tn then
        if n_c > c then
          redis.call("LSET", lkey, i, s .. " " .. n .. " " .. (n_c - c))
        else
          redis.call("LREM", lkey, 1, e)
        end
        -- The state's instant is the newest admission still in the log, as if the
        -- given-back one had never been.
        local total = max(tonumber(k) - min(c, n_c), 0)
        local tail = redis.call("LINDEX", lkey, -1)
        local ls, ln = ts, tn
        if tail then
          ls, ln = entry(tail)
        end
        redis.call("SET", skey, "l " .. total .. " " .. ls .. " " .. ln, "KEEPTTL")
        return
      end
      if later(ts, tn, s, n) then
        return
      end
    end
  end
end

-- Decides check i, whose state key is keys[sk] and log key keys[lk] (nothing
-- written).
-- A policy's numbers, parsed, by their text: a store sends the same few again and
-- again, and tonumber costs more than a table lookup. Emptied past 1024 entries.
local nums, nnums = {}, 0

local function num(text)
  local v = tonumber(text)
  if v then
    if nnums >= 1024 then
      nums, nnums = {}, 0
    end
    nums[text] = v
    nnums = nnums + 1
  end
  return v
end

local function one(keys, args, i, ts, tn, sk, lk)
  local b = 4 + 5 * (i - 1)
  local alg = args[b + 1]
  local ax, ay, ac = args[b + 2], args[b + 3], args[b + 5]
  local x, y, c = nums[ax] or num(ax), nums[ay] or num(ay), nums[ac] or num(ac)
  local raw = redis.call("GET", keys[sk])
  if alg == "f" then
    return fixed(raw, ts, tn, x, y, c)
  elseif alg == "c" then
    return counter(raw, ts, tn, x, y, c)
  elseif alg == "l" then
    return log(raw, ts, tn, x, y, c, keys[lk])
  end
  local az = args[b + 4]
  return bucket(raw, ts, tn, x, y, nums[az] or num(az), c, alg == "k")
end

local function decide(keys, args)
  if not floor then
    bind()
  end
  local mode = args[1]
  local ts, tn
  if args[2] == "" then
    local now = redis.call("TIME")
    ts, tn = tonumber(now[1]), tonumber(now[2]) * 1000
  else
    ts, tn = tonumber(args[2]), tonumber(args[3])
  end
  local least = tonumber(args[4])

  -- Where each check's keys are: its state key, then its log key if it has one.
  local n = (#args - 4) / 5
  local sk, lk = {}, {}
  local k = 1
  for i = 1, n do
    sk[i] = k
    if args[4 + 5 * (i - 1) + 1] == "l" then
      lk[i] = k + 1
      k = k + 2
    else
      lk[i] = false
      k = k + 1
    end
  end

  if mode == "g" then
    for i = 1, n do
      local b = 4 + 5 * (i - 1)
      give_back(args[b + 1], keys[sk[i]], keys[lk[i]], ts, tn,
        tonumber(args[b + 2]), tonumber(args[b + 3]), tonumber(args[b + 5]))
    end
    return { ts, tn }
  end

  local out = { ts, tn }
  local writes = {}
  local all = true
  local o = 2
  for i = 1, n do
    local a, rem, reset, retry, delay, reason, vrem, vreset, state, ttl, todo =
      one(keys, args, i, ts, tn, sk[i], lk[i])
    out[o + 1], out[o + 2], out[o + 3], out[o + 4] = a, rem, reset, retry
    out[o + 5], out[o + 6], out[o + 7], out[o + 8] = delay, reason, vrem, vreset
    o = o + 8
    if a == 0 then
      all = false
    end
    writes[3 * i - 2], writes[3 * i - 1], writes[3 * i] = state, ttl, todo or false
  end

  if all and mode == "c" then
    for i = 1, n do
      local ms = ttl_ms(writes[3 * i - 1], least)
      local todo = writes[3 * i]
      if todo then
        write_log(keys[lk[i]], todo, ms)
      end
      redis.call("SET", keys[sk[i]], writes[3 * i - 2], "PX", format("%d", ms))
    end
  end
  return out
end

-- The single check's description, parsed, by its text (ARGV[1] of __NAME___1). The
-- texts a store sends are few (its policies, their costs), so most calls find theirs;
-- the table is emptied when it grows past 1024, so it stays small whatever comes.
local specs, nspecs = {}, 0

local function spec_of(text)
  local m, a, x, y, z, c, least = match(text, "^([sq])(%a) (%d+) (%d+) (%d+) (%d+) (%d+)$")
  if not m then
    return error("tollgate: bad check description " .. text)
  end
  local p = {
    m == "s", a, tonumber(x), tonumber(y), tonumber(z), tonumber(c), tonumber(least),
    a ~= "f" and a ~= "c" and a ~= "l",
  }
  if nspecs >= 1024 then
    specs, nspecs = {}, 0
  end
  specs[text] = p
  nspecs = nspecs + 1
  return p
end

-- Decides one check described by p (parsed by spec_of) at the instant ts, tn, whose
-- state key is keys[k] (and log key keys[k + 1]), and writes its new state; returns
-- the reply of __NAME___1 for it. For the bucket family the reply is one integer,
-- the wait (see the header): an array reply costs Redis more than the whole decision.
local function one_check(keys, k, p, ts, tn)
  local call = redis.call
  local raw = call("GET", keys[k])
  local alg, x, y, c = p[2], p[3], p[4], p[6]
  if p[8] then
    -- bucket(), reduced to what the reply and the write need.
    local ss, sn, wait = tat(raw, ts, tn)
    if c > p[5] then
      return -wait - 1
    end
    local ahead = wait + c * x
    if ahead > y then
      return -wait - 1
    end
    if p[1] then
      local ns, nn = add(ss, sn, c * x)
      call("SET", keys[k], format("b %d %d", ns, nn), "PX", format("%d", ttl_ms(ahead, p[7])))
    end
    return wait
  end
  local a, rem, reset, retry, delay, reason, state, ttl, todo, _
  if alg == "f" then
    a, rem, reset, retry, delay, reason, _, _, state, ttl = fixed(raw, ts, tn, x, y, c)
  elseif alg == "c" then
    a, rem, reset, retry, delay, reason, _, _, state, ttl = counter(raw, ts, tn, x, y, c)
  else
    a, rem, reset, retry, delay, reason, _, _, state, ttl, todo = log(raw, ts, tn, x, y, c, keys[k + 1])
  end
  if a == 1 and p[1] then
    local ms = ttl_ms(ttl, p[7])
    if todo then
      write_log(keys[k + 1], todo, ms)
    end
    call("SET", keys[k], state, "PX", format("%d", ms))
  end
  return { a, rem, reset, retry, delay, reason }
end

-- One check, the common call, kept lean: its description in one argument, parsed
-- once, no stack bookkeeping, and only the decision in the reply.
local function single(keys, args)
  if not floor then
    bind()
  end
  local text = args[1]
  local p = specs[text] or spec_of(text)
  local ts, tn
  if args[2] then
    ts, tn = tonumber(args[2]), tonumber(args[3])
  else
    local now = redis.call("TIME")
    ts, tn = tonumber(now[1]), tonumber(now[2]) * 1000
  end
  return one_check(keys, 1, p, ts, tn)
end

-- Many independent checks in one call, each as __NAME___1 would decide it, one
-- after another (see the header). A check that fails (a key of another type) fails
-- alone: its place in the reply holds the error, and the others are decided.
local function many(keys, args)
  if not floor then
    bind()
  end
  local caller = args[1] == "c"
  local ts, tn
  if not caller then
    local now = redis.call("TIME")
    ts, tn = tonumber(now[1]), tonumber(now[2]) * 1000
  end
  local out = {}
  local n, k, a, last = 0, 1, 2, #args
  while a <= last do
    local text = args[a]
    local p = specs[text] or spec_of(text)
    if caller then
      ts, tn = tonumber(args[a + 1]), tonumber(args[a + 2])
      a = a + 3
    else
      a = a + 1
    end
    local ok, r = pcall(one_check, keys, k, p, ts, tn)
    n = n + 1
    if ok then
      out[n] = r
    elseif type(r) == "table" and r.err then
      out[n] = r
    else
      -- Redis's own errors start with their code (WRONGTYPE ...); others get one.
      r = tostring(r)
      out[n] = { err = match(r, "^%u+ ") and r or "ERR tollgate: " .. r }
    end
    if p[2] == "l" then
      k = k + 2
    else
      k = k + 1
    end
  end
  return out
end

redis.register_function("__NAME__", decide)
redis.register_function("__NAME___1", single)
redis.register_function("__NAME___n", many)
