-- The store's generation marker. When it is missing (the state is new, or Redis lost its data)
-- it is created from ARGV[1], and every partition without a fencing token gets one from the
-- server's clock (microseconds): tokens of the new generation start above any token handed out
-- before, so a worker still holding a token of the lost generation can never match a reissued
-- one. Existing tokens are left alone. Several workers racing here converge: the first creates
-- the marker, the others read it.
--
-- KEYS[1] = the marker, KEYS[2] = the fencing tokens (hash: partition -> token)
-- ARGV[1] = candidate id, ARGV[2] = number of partitions
-- Returns the marker as stored.

local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local floor = now[1] .. string.format('%06d', tonumber(now[2]))
for partition = 0, tonumber(ARGV[2]) - 1 do
  redis.call('HSETNX', KEYS[2], tostring(partition), floor)
end
return ARGV[1]
