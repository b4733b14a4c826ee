-- Cluster layout: what one outbox (a source partition's rows for one emission slot) holds past
-- the slot's cursor, read at one point in time with the outbox's base (entries trimmed so far).
-- A cursor past the end means the outbox went back (its master lost data): the whole outbox is
-- returned, and the fold moves the cursor to its end (README: Redis Cluster).
--
-- KEYS[1] = the outbox (list), KEYS[2] = its base
-- ARGV[1] = the slot's cursor into it (an absolute entry count)
-- Returns {base, length, entries past the cursor}.

local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local length = redis.call('LLEN', KEYS[1])
local cursor = tonumber(ARGV[1])
local first = cursor - base
if first < 0 or first > length then
  first = 0
end
if first >= length then
  return {base, length, {}}
end
return {base, length, redis.call('LRANGE', KEYS[1], first, -1)}
