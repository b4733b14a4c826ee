-- After a slot's series were emitted: drop the exemplars that went out, subtract what a DELTA
-- emission reported, and delete series idle past the expiration (re-checked here, because a
-- merge may have touched them since they were read).
--
-- ARGV[1] = msgpack {slot_key, active_key, expire_before_us, delta_mode, now_us,
--                    {{digest, exemplars_sent, count, sum, buckets, exp}, ...}}
-- Returns {updated, expired}.

local args = cmsgpack.unpack(ARGV[1])
local slot_key, active_key, expire_before, delta_mode, now_us = args[1], args[2], args[3], args[4], args[5]
local updated, expired = 0, 0
for _, entry in ipairs(args[6]) do
  local stored = redis.call('HGET', slot_key, entry[1])
  if stored then
    local record = cmsgpack.unpack(stored)
    if expire_before > 0 and record[3] < expire_before then
      redis.call('HDEL', slot_key, entry[1])
      redis.call('DECR', active_key)
      expired = expired + 1
    else
      local exemplars = record[8]
      for _ = 1, math.min(entry[2], #exemplars) do table.remove(exemplars, 1) end
      if delta_mode == 1 then
        record[2] = now_us
        record[4] = record[4] - entry[3]
        record[5] = record[5] - entry[4]
        local buckets = record[6]
        if #buckets == #entry[5] then
          for i = 1, #buckets do buckets[i] = buckets[i] - entry[5][i] end
        end
        record[7] = exp_subtract(record[7], entry[6])
      end
      redis.call('HSET', slot_key, entry[1], cmsgpack.pack(record))
      updated = updated + 1
    end
  end
end
return {updated, expired}
