-- Omiro's moderation records in Redis: reports and their statuses, the
-- reports of each client, moderator accounts, console sessions and the
-- audit log. Each operation is one call of this script, so it is atomic.
--
-- ARGV[1] operation, ARGV[2] key prefix, ARGV[3] clock offset in seconds (0
-- outside tests), ARGV[4] report retention in seconds, ARGV[5] audit
-- retention in seconds. The operation's own arguments follow from ARGV[6].
--
-- Time is Redis's TIME plus the offset: unix time. These records are not a
-- server's live state (omiro.lua's are): a Redis that lost them has lost
-- them, and nothing here depends on the incarnation of Redis or on which
-- server calls. A report's status is changed only by compare-and-set, so
-- two moderators cannot both decide one report.
--
-- Every key has a TTL but the accounts (kept until removed):
--   P.."reports"       zset   report id -> "size|JSON"
--   P.."report_t"      zset   report id -> when it was filed (unix s)
--   P.."report_bytes"  string the store's size in bytes (its bound: the caller's)
--   P.."report_id"     string the last report id given (kept as long as the audit log,
--                             which names report ids)
--   P.."rs:"..id       string the report's status (JSON)
--   P.."open"          zset   report ids still open or claimed
--   P.."rg:"..client   zset   report id -> when: the reports of that client
--   P.."bh:"..client   list   the bans set on that client, newest first (omiro.lua add_ban)
--   P.."mods"          hash   account name -> account (JSON)
--   P.."cs:"..key      string a console session: "expiry|JSON"; expires once idle
--   P.."act:"..minute  hash   name -> count: every server's matches and call outcomes
--                             in that unix minute (the console's live view)
--   P.."audit"         zset   entry id -> "at|JSON"
--   P.."audit_id"      string the last audit id given
--   P.."inv:"..id      hash   an invite of the entry gate: key (the code's SHA-256),
--                             left (entries left), exp (expiry), json (the record);
--                             kept until a day past its expiry (the caller's KEPT)
--   P.."invites"       zset   invite id -> its expiry: the invites kept
--   P.."raid"          string raid mode's record (JSON) while it is on; no TTL
--   P.."pow_used"      zset   proof-of-work challenge signature -> its expiry: the
--                             solutions used, dropped once expired; at most the
--                             caller's limit (refused beyond it)
--   P.."pow_rate"      hash   step (unix s / step length) -> new sessions in it;
--                             steps older than a minute dropped at every call
--   P.."pow_until"     string adaptive proof of work is on until this unix time
-- Reports outlive their retention by at most one call: each write drops the
-- expired ones (EXPIRE_BATCH at a time) and every read skips them.

local op, P, offset = ARGV[1], ARGV[2], tonumber(ARGV[3])
local RETAIN, AUDIT_RETAIN = tonumber(ARGV[4]), tonumber(ARGV[5])
local A = {}
for i = 6, #ARGV do A[#A + 1] = ARGV[i] end

local t = redis.call('TIME')
local NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000 + offset
local EXPIRE_BATCH = 256
local MAX_AUDIT = 1000000

local function ms(seconds)
  return math.max(1, math.ceil(seconds * 1000))
end

local function fmt(x)
  return string.format('%.6f', x)
end

local function record(id)
  local found = redis.call('ZRANGEBYSCORE', P .. 'reports', id, id)
  if #found == 0 then return nil end
  return string.match(found[1], '^%d+|(.*)$'), tonumber(string.match(found[1], '^(%d+)|'))
end

local function drop(id)
  local _, size = record(id)
  if size then
    redis.call('DECRBY', P .. 'report_bytes', size)
    redis.call('ZREMRANGEBYSCORE', P .. 'reports', id, id)
  end
  redis.call('ZREM', P .. 'report_t', id)
  redis.call('ZREM', P .. 'open', id)
  redis.call('DEL', P .. 'rs:' .. id)
end

local function kept(id)
  local at = redis.call('ZSCORE', P .. 'report_t', id)
  return at and tonumber(at) > NOW - RETAIN
end

local function expire()
  local old = redis.call('ZRANGEBYSCORE', P .. 'report_t', '-inf', fmt(NOW - RETAIN), 'LIMIT', 0,
    EXPIRE_BATCH)
  for _, id in ipairs(old) do drop(id) end
  local entries = redis.call('ZRANGE', P .. 'audit', 0, EXPIRE_BATCH - 1)
  for _, entry in ipairs(entries) do
    if tonumber(string.match(entry, '^([^|]+)|')) > NOW - AUDIT_RETAIN then break end
    redis.call('ZREM', P .. 'audit', entry)
  end
end

local function keep(key, seconds)
  redis.call('PEXPIRE', key, ms(seconds))
end

if op == 'report' then
  -- report (JSON), its size, the store's bound in bytes, when it was filed, reported
  -- client, its status (JSON): its id
  expire()
  local size, at, client = tonumber(A[2]), A[4], A[5]
  local id = redis.call('INCR', P .. 'report_id')
  redis.call('ZADD', P .. 'reports', id, size .. '|' .. A[1])
  redis.call('ZADD', P .. 'report_t', at, id)
  redis.call('ZADD', P .. 'open', id, id)
  redis.call('SET', P .. 'rs:' .. id, A[6], 'PX', ms(tonumber(at) + RETAIN - NOW))
  local group = P .. 'rg:' .. client
  redis.call('ZADD', group, at, id)
  redis.call('ZREMRANGEBYSCORE', group, '-inf', fmt(NOW - RETAIN))
  keep(group, RETAIN)
  local total = redis.call('INCRBY', P .. 'report_bytes', size)
  while total > tonumber(A[3]) do -- the oldest go first
    local oldest = redis.call('ZRANGE', P .. 'reports', 0, 0, 'WITHSCORES')
    if #oldest == 0 then break end
    drop(oldest[2])
    total = tonumber(redis.call('GET', P .. 'report_bytes'))
  end
  for _, k in ipairs({'reports', 'report_t', 'report_bytes', 'open'}) do keep(P .. k, RETAIN) end
  keep(P .. 'report_id', math.max(RETAIN, AUDIT_RETAIN))
  return id

elseif op == 'reports' then
  -- limit, before ("" for none): {id, JSON, ...} newest first
  local top = A[2] == '' and '+inf' or '(' .. A[2]
  local page = redis.call('ZREVRANGEBYSCORE', P .. 'reports', top, '-inf', 'WITHSCORES', 'LIMIT', 0,
    tonumber(A[1]))
  local out = {}
  for i = 1, #page, 2 do
    if not kept(page[i + 1]) then break end
    out[#out + 1] = page[i + 1]
    out[#out + 1] = string.match(page[i], '^%d+|(.*)$')
  end
  return out

elseif op == 'get' then
  -- id: its JSON, or false
  if not kept(A[1]) then return false end
  return (record(A[1])) or false

elseif op == 'statuses' then
  -- ids...: each one's status (JSON), "" for a report no longer kept
  local out = {}
  for i, id in ipairs(A) do
    out[i] = kept(id) and redis.call('GET', P .. 'rs:' .. id) or ''
  end
  return out

elseif op == 'swap' then
  -- id, expected status, new status, 1 if the new one is decided: 1 if set
  local key = P .. 'rs:' .. A[1]
  if not kept(A[1]) or redis.call('GET', key) ~= A[2] then return 0 end
  redis.call('SET', key, A[3], 'KEEPTTL')
  if A[4] == '1' then
    redis.call('ZREM', P .. 'open', A[1])
  else
    redis.call('ZADD', P .. 'open', A[1], A[1])
  end
  return 1

elseif op == 'open' then
  -- limit: {id, JSON, ...} of the open or claimed reports, oldest first
  local out = {}
  local ids = redis.call('ZRANGE', P .. 'open', 0, tonumber(A[1]) - 1)
  for _, id in ipairs(ids) do
    local json = kept(id) and record(id)
    if json then
      out[#out + 1] = id
      out[#out + 1] = json
    else
      redis.call('ZREM', P .. 'open', id)
    end
  end
  return out

elseif op == 'of' then
  -- client, limit: {id, JSON, ...} of its reports, newest first
  local out = {}
  local group = P .. 'rg:' .. A[1]
  for _, id in ipairs(redis.call('ZREVRANGE', group, 0, tonumber(A[2]) - 1)) do
    local json = kept(id) and record(id)
    if json then
      out[#out + 1] = id
      out[#out + 1] = json
    else
      redis.call('ZREM', group, id)
    end
  end
  return out

elseif op == 'since' then
  -- at: how many kept reports were filed at or after it
  return redis.call('ZCOUNT', P .. 'report_t', math.max(tonumber(A[1]), NOW - RETAIN), '+inf')

elseif op == 'ban_history' then
  -- client, limit: the bans set on it (JSON) within the retention, newest first
  local out = {}
  for _, ban in ipairs(redis.call('LRANGE', P .. 'bh:' .. A[1], 0, tonumber(A[2]) - 1)) do
    if tonumber(cjson.decode(ban).created_at) <= NOW - RETAIN then break end
    out[#out + 1] = ban
  end
  return out

elseif op == 'add_mod' then
  return redis.call('HSETNX', P .. 'mods', A[1], A[2])

elseif op == 'mod' then
  return redis.call('HGET', P .. 'mods', A[1])

elseif op == 'mods' then
  return redis.call('HVALS', P .. 'mods')

elseif op == 'remove_mod' then
  return redis.call('HDEL', P .. 'mods', A[1])

elseif op == 'open_session' then
  -- key, session (JSON), idle seconds: kept as "expiry|JSON" (the expiry in this
  -- script's time, which tests move; the TTL is Redis's own, a little longer)
  local idle = tonumber(A[3])
  redis.call('SET', P .. 'cs:' .. A[1], fmt(NOW + idle) .. '|' .. A[2], 'PX', ms(idle) + 1000)
  return 1

elseif op == 'session' then
  -- key, idle seconds: the session (JSON), its idle expiry renewed; or false
  local key, idle = P .. 'cs:' .. A[1], tonumber(A[2])
  local kept = redis.call('GET', key)
  if not kept then return false end
  local expires, session = string.match(kept, '^([^|]+)|(.*)$')
  if tonumber(expires) <= NOW then
    redis.call('DEL', key)
    return false
  end
  redis.call('SET', key, fmt(NOW + idle) .. '|' .. session, 'PX', ms(idle) + 1000)
  return session

elseif op == 'close_session' then
  return redis.call('DEL', P .. 'cs:' .. A[1])

elseif op == 'act_add' then
  -- unix minute, how long to keep it (s), then name, count, ...: add to that minute
  local key = P .. 'act:' .. A[1]
  for i = 3, #A, 2 do redis.call('HINCRBY', key, A[i], tonumber(A[i + 1])) end
  keep(key, tonumber(A[2]))
  return 1

elseif op == 'act' then
  -- since (a unix minute), at most this many minutes: {name, count, ...} of each minute
  -- from then to now (the caller sums them)
  local out = {}
  local now_minute = math.floor(NOW / 60)
  local from = math.max(tonumber(A[1]), now_minute - tonumber(A[2]))
  for minute = from, now_minute do
    local h = redis.call('HGETALL', P .. 'act:' .. minute)
    for i = 1, #h do out[#out + 1] = h[i] end
  end
  return out

elseif op == 'audit_add' then
  -- entry (JSON), when: its id
  expire()
  local id = redis.call('INCR', P .. 'audit_id')
  redis.call('ZADD', P .. 'audit', id, A[2] .. '|' .. A[1])
  if redis.call('ZCARD', P .. 'audit') > MAX_AUDIT then
    redis.call('ZPOPMIN', P .. 'audit')
  end
  keep(P .. 'audit', AUDIT_RETAIN)
  keep(P .. 'audit_id', AUDIT_RETAIN)
  return id

elseif op == 'audit' then
  -- limit, before ("" for none): {id, JSON, ...} newest first
  local top = A[2] == '' and '+inf' or '(' .. A[2]
  local page = redis.call('ZREVRANGEBYSCORE', P .. 'audit', top, '-inf', 'WITHSCORES', 'LIMIT', 0,
    tonumber(A[1]))
  local out = {}
  for i = 1, #page, 2 do
    local at, json = string.match(page[i], '^([^|]+)|(.*)$')
    if tonumber(at) <= NOW - AUDIT_RETAIN then break end
    out[#out + 1] = page[i + 1]
    out[#out + 1] = json
  end
  return out

elseif op == 'inv_add' then
  -- id, key, uses, expiry, JSON, kept-expired seconds, most unexpired: 1, or 0 if full
  local exp, kept_s = tonumber(A[4]), tonumber(A[6])
  redis.call('ZREMRANGEBYSCORE', P .. 'invites', '-inf', fmt(NOW - kept_s))
  if redis.call('ZCOUNT', P .. 'invites', '(' .. fmt(NOW), '+inf') >= tonumber(A[7]) then
    return 0
  end
  local k = P .. 'inv:' .. A[1]
  redis.call('DEL', k)
  redis.call('HSET', k, 'key', A[2], 'left', A[3], 'exp', A[4], 'json', A[5])
  redis.call('PEXPIRE', k, ms(exp + kept_s - NOW) + 1000)
  redis.call('ZADD', P .. 'invites', exp, A[1])
  return 1

elseif op == 'invs' then
  -- kept-expired seconds: {JSON, left, ...}
  redis.call('ZREMRANGEBYSCORE', P .. 'invites', '-inf', fmt(NOW - tonumber(A[1])))
  local out = {}
  for _, id in ipairs(redis.call('ZRANGE', P .. 'invites', 0, -1)) do
    local v = redis.call('HMGET', P .. 'inv:' .. id, 'json', 'left')
    if v[1] then
      out[#out + 1] = v[1]
      out[#out + 1] = v[2]
    end
  end
  return out

elseif op == 'inv_revoke' then
  -- id: 1 if it was kept
  redis.call('ZREM', P .. 'invites', A[1])
  return redis.call('DEL', P .. 'inv:' .. A[1])

elseif op == 'inv_use' then
  -- id, key: "admitted", "unknown", "expired" or "used_up"; one entry taken if admitted
  local k = P .. 'inv:' .. A[1]
  local v = redis.call('HMGET', k, 'key', 'left', 'exp')
  if not v[1] or v[1] ~= A[2] then return 'unknown' end
  if tonumber(v[3]) <= NOW then return 'expired' end
  if tonumber(v[2]) <= 0 then return 'used_up' end
  redis.call('HINCRBY', k, 'left', -1)
  return 'admitted'

elseif op == 'raid_set' then
  -- JSON, or "" to turn raid mode off
  if A[1] == '' then
    redis.call('DEL', P .. 'raid')
  else
    redis.call('SET', P .. 'raid', A[1])
  end
  return 1

elseif op == 'raid' then
  return redis.call('GET', P .. 'raid')

elseif op == 'pow_use' then
  -- signature, expiry (unix s), limit: "new", "used" or "full"
  local k = P .. 'pow_used'
  redis.call('ZREMRANGEBYSCORE', k, '-inf', fmt(NOW))
  if redis.call('ZSCORE', k, A[1]) then return 'used' end
  if redis.call('ZCARD', k) >= tonumber(A[3]) then return 'full' end
  redis.call('ZADD', k, A[2], A[1])
  local left = ms(tonumber(A[2]) - NOW)
  if redis.call('PTTL', k) < left then redis.call('PEXPIRE', k, left) end
  return 'new'

elseif op == 'pow_note' then
  -- added, per minute, quiet (s), step (s): 1 while adaptive proof of work is on
  local added, per_minute, quiet, step_s = tonumber(A[1]), tonumber(A[2]), tonumber(A[3]), tonumber(A[4])
  local rate, until_key = P .. 'pow_rate', P .. 'pow_until'
  local step = math.floor(NOW / step_s)
  local first = step - math.floor(60 / step_s) + 1
  if added > 0 then redis.call('HINCRBY', rate, tostring(step), added) end
  local raw = redis.call('HGETALL', rate)
  local total = 0
  for i = 1, #raw, 2 do
    if tonumber(raw[i]) < first then
      redis.call('HDEL', rate, raw[i])
    else
      total = total + tonumber(raw[i + 1])
    end
  end
  redis.call('EXPIRE', rate, 120)
  if total > per_minute then
    redis.call('SET', until_key, fmt(NOW + quiet), 'PX', ms(quiet + 60))
    return 1
  end
  local until_at = tonumber(redis.call('GET', until_key) or '0')
  if until_at > NOW then return 1 end
  return 0
end

return redis.error_reply('unknown operation ' .. op)
