-- Cluster layout: drop the outbox entries a slot has folded (its committed cursor, an absolute
-- entry count). The base counts the entries trimmed so far, so a repeated or late trim with an
-- older cursor changes nothing.
--
-- KEYS[1] = the slot's outbox (list), KEYS[2] = its base
-- ARGV[1] = the cursor
-- Returns how many entries were dropped.

local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local cursor = tonumber(ARGV[1])
local available = redis.call('LLEN', KEYS[1])
if cursor > base + available then
  cursor = base + available
end
if cursor <= base then
  return 0
end
redis.call('LTRIM', KEYS[1], cursor - base, -1)
redis.call('SET', KEYS[2], cursor)
return cursor - base
