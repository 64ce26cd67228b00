-- The reference for the throughput bench: a minimal GCRA (TIME, GET, SET PX), what
-- a hand-written Redis rate limiter does, without tollgate's exactness or stacks.
-- KEYS[1]: the key. ARGV[1]: T, ARGV[2]: tau, in microseconds. Returns 1 or 0.
local now = redis.call("TIME")
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local tat = tonumber(redis.call("GET", KEYS[1]) or t)
if tat < t then
  tat = t
end
local new = tat + tonumber(ARGV[1])
if new - t <= tonumber(ARGV[2]) then
  redis.call("SET", KEYS[1], string.format("%d", new), "PX", math.floor((new - t) / 1000) + 1)
  return 1
end
return 0
