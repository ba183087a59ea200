"""The Lua scripts of the run event log (`loomwork.streams.run_events`): appending an event
and taking over a draft, each one atomic step on a run's meta hash and stream."""

from __future__ import annotations

#: How many of a run's latest appends a repeated one is recognised among: more than a run's
#: appenders can add between a lost reply and its repeat (its steps, tools and deltas).
RECENT_TOKENS = 32

# KEYS[1] meta hash, KEYS[2] stream.
# ARGV[1] payload, ARGV[2] terminal ("0"/"1"), ARGV[3] retention seconds, ARGV[4] max events,
# ARGV[5] only as (n > 0: append only if the event gets id n, else write nothing and return 0),
# ARGV[6] once key ('' or a name: an event with that name is appended once; a repeat answers
# the first one's id, kept in the meta hash as `o:<name>`),
# ARGV[7] draft ('' or a name: append only while that draft is not taken, else write nothing
# and return -1; marks the draft `d:<name>` as drafted; a taken one is `taken...`),
# ARGV[8] token (12 hex digits naming this append: sent again after a lost reply, it answers
# the id the first one got; the latest RECENT_TOKENS appends are kept in `r`, newest first, as
# 20-character records: the token, then the id in 8 hex digits),
# ARGV[9] "1" when ids are bounded by the `ceil` of the meta hash (answers -2, writing
# nothing, when the next id is above it: a ceiling is to be reserved first),
# ARGV[10] '' or a ceiling just reserved as the log's first (`reserve_new`): `ceil` is
# raised to it first.
APPEND_LUA = """
if ARGV[10] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'ceil') or '0') < tonumber(ARGV[10]) then
  redis.call('HSET', KEYS[1], 'ceil', ARGV[10])
end
local recent = redis.call('HGET', KEYS[1], 'r') or ''
local token = ARGV[8]
local from = 1
while true do
  local at = string.find(recent, token, from, true)
  if not at then break end
  if (at - 1) % 20 == 0 then
    return tonumber(string.sub(recent, at + 12, at + 19), 16)
  end
  from = at + 1
end
if ARGV[6] ~= '' then
  local first = redis.call('HGET', KEYS[1], 'o:' .. ARGV[6])
  if first then
    return tonumber(first)
  end
end
if ARGV[7] ~= '' then
  local state = redis.call('HGET', KEYS[1], 'd:' .. ARGV[7]) or ''
  if string.sub(state, 1, 5) == 'taken' then
    return -1
  end
end
local finished = redis.call('HGET', KEYS[1], 'finished')
if finished then
  return redis.error_reply('LOOMWORK_RUN_FINISHED ' .. finished)
end
local n = tonumber(redis.call('HGET', KEYS[1], 'last') or '0') + 1
if ARGV[9] == '1' and n > tonumber(redis.call('HGET', KEYS[1], 'ceil') or '0') then
  return -2
end
local only_as = tonumber(ARGV[5])
if only_as > 0 and n ~= only_as then
  return 0
end
local id = string.format('%d-0', n)
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, id, 'p', ARGV[1], 't', ARGV[2])
else
  redis.call('XADD', KEYS[2], id, 'p', ARGV[1], 't', ARGV[2])
end
redis.call('HSET', KEYS[1], 'last', n)
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'o:' .. ARGV[6], n)
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'd:' .. ARGV[7], 'drafted')
end
recent = token .. string.format('%08x', n) .. recent
redis.call('HSET', KEYS[1], 'r', string.sub(recent, 1, 20 * RECENT_TOKENS))
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'finished', n)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return n
""".replace("RECENT_TOKENS", str(RECENT_TOKENS))

# KEYS[1] meta hash. ARGV[1] draft name, ARGV[2] token (as an append's: the same take sent
# again after its reply was lost answers the same). Marks the draft taken (`taken`, or
# `taken:<token>` by the take that found events); 1 if it had events.
TAKE_DRAFT_LUA = """
local field = 'd:' .. ARGV[1]
local was = redis.call('HGET', KEYS[1], field) or ''
if was == 'taken:' .. ARGV[2] then
  return 1
end
if was == 'drafted' then
  redis.call('HSET', KEYS[1], field, 'taken:' .. ARGV[2])
  return 1
end
if string.sub(was, 1, 5) ~= 'taken' then
  redis.call('HSET', KEYS[1], field, 'taken')
end
return 0
"""
