-- Dovecot 2.4 passdb and userdb of a chatmail server: install as
-- /etc/dovecot/chatmail-auth.lua (90-chatmail.conf names it, AUTH_LUA
-- there). Dovecot 2.4 has no dict passdb, so this script asks doveauth
-- over HTTP on a unix socket ([doveauth] http_socket; doveauth/authhttp
-- documents the requests and answers). scripts/stack renders this same
-- file.
--
-- Placeholders (each written between two @ below):
--   DOVEAUTH_HTTP_SOCKET  doveauth's HTTP socket ([doveauth] http_socket),
--                         e.g. /run/doveauth/http.socket
--
-- Dovecot runs this in auth-worker, which is root in 2.4.1: the socket is
-- 0600 and doveauth's (http_socket_mode), so no imap or lmtp process,
-- though in group dovecot, reaches it.
--
-- doveauth keeps every rule of account creation (registration, local part
-- and password rules, the creation rate, tombstones), the same for Dovecot
-- 2.3 and 2.4. For an existing account it hands out the stored hash and
-- Dovecot checks the password itself; the password goes to doveauth only
-- when a first login creates the account. Nothing here logs a password.
--
-- Dovecot 2.4.1's traps: HTTP client settings have their 2.4 names
-- (request_timeout, request_max_attempts), and a bad one stops the whole
-- auth service; a failure result must come with a string (or nil), else
-- Dovecot turns it into an internal error.

local socket_path = "@DOVEAUTH_HTTP_SOCKET@"

local auth = dovecot.auth
local client

function script_init()
  -- proxy_socket_path sends every request to the unix socket, whatever
  -- the URL's host; the URL is sent in absolute form (POST http://doveauth/...).
  client = dovecot.http.client({
    proxy_socket_path = socket_path,
    request_timeout = "5s",
    request_max_attempts = 1,
  })
  return 0
end

local function urlencode(s)
  return (string.gsub(s, "[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

-- ask POSTs the form (a list of names and values) to doveauth and returns
-- the status, the answer (key=value lines) and the reason. Transport
-- failures come as Dovecot's own statuses (9000 and up) with their reason.
local function ask(path, form)
  local parts = {}
  for i = 1, #form, 2 do
    parts[#parts + 1] = form[i] .. "=" .. urlencode(form[i + 1])
  end
  local req = client:request({ url = "http://doveauth" .. path, method = "POST" })
  req:add_header("Content-Type", "application/x-www-form-urlencoded")
  -- One connection per request, as Dovecot's dict client did on 2.3: a
  -- kept-alive connection that doveauth closed meanwhile (idle timeout,
  -- restart) would fail the next login.
  req:add_header("Connection", "close")
  req:set_payload(table.concat(parts, "&"))
  local resp = req:submit()
  return resp:status(), resp:payload() or "", resp:reason()
end

-- each calls fn(key, value) for every key=value line of an answer.
local function each(payload, fn)
  for line in string.gmatch(payload, "[^\n]+") do
    local k, v = string.match(line, "^([^=]+)=(.*)$")
    if k ~= nil then
      fn(k, v)
    end
  end
end

-- call is ask returning the answer's fields (and its payload), with a Lua
-- error turned into status 0, so that nothing escapes as an internal error
-- without its reason.
local function call(path, form)
  local ok, status, payload, reason = pcall(ask, path, form)
  if not ok then
    return 0, {}, tostring(status), ""
  end
  local fields = {}
  each(payload, function(k, v) fields[k] = v end)
  return status, fields, reason, payload
end

-- failure is the text of a temporary failure: doveauth's own error (it
-- names no one), or the transport's.
local function failure(status, fields, reason)
  if fields.error ~= nil then
    return "doveauth: " .. fields.error
  end
  return string.format("doveauth unreachable (%d %s)", status, reason or "")
end

-- A login with a password (PLAIN, LOGIN: IMAP, SMTP AUTH through Postfix).
function auth_password_verify(req, password)
  local status, f, reason = call("/passdb", { "user", req.user, "password_length", tostring(#password) })
  if status == 404 then
    -- No such account: a first login, which doveauth may turn into one.
    status, f, reason = call("/create", { "user", req.user, "password", password })
    if status == 404 then
      return auth.PASSDB_RESULT_USER_UNKNOWN, "no such user"
    end
  end
  if (status ~= 200 and status ~= 403) or f.password == nil then
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, failure(status, f, reason)
  end
  local ok, err = req:password_verify(f.password, password)
  if ok < 0 then
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "stored hash unusable: " .. tostring(err)
  elseif ok == 0 then
    return auth.PASSDB_RESULT_PASSWORD_MISMATCH, "password mismatch"
  elseif status == 403 then
    -- Blocked: said only to whoever knows the password.
    return auth.PASSDB_RESULT_USER_DISABLED, f.reason or "blocked"
  end
  return auth.PASSDB_RESULT_OK, {}
end

-- A lookup without a password (doveadm auth lookup, other mechanisms):
-- the stored hash, never a new account.
function auth_passdb_lookup(req)
  local status, f, reason = call("/passdb", { "user", req.user, "password_length", "0" })
  if status == 200 and f.password ~= nil then
    return auth.PASSDB_RESULT_OK, { password = f.password }
  elseif status == 403 then
    return auth.PASSDB_RESULT_USER_DISABLED, f.reason or "blocked"
  elseif status == 404 then
    return auth.PASSDB_RESULT_USER_UNKNOWN, "no such user"
  end
  return auth.PASSDB_RESULT_INTERNAL_FAILURE, failure(status, f, reason)
end

-- Every login and every LMTP delivery: the account's home (its Maildir)
-- and mail user, as doveauth names them.
function auth_userdb_lookup(req)
  local status, f, reason = call("/userdb", { "user", req.user })
  if status == 200 and f.home ~= nil then
    return auth.USERDB_RESULT_OK, f
  elseif status == 404 then
    return auth.USERDB_RESULT_USER_UNKNOWN, "no such user"
  end
  return auth.USERDB_RESULT_INTERNAL_FAILURE, failure(status, f, reason)
end

-- doveadm's commands over all users (-A, doveadm user '*'). A failure is
-- an error: Dovecot then reports the listing as failed, never as empty.
function auth_userdb_iterate()
  local status, f, reason, payload = call("/users", {})
  if status ~= 200 then
    error(failure(status, f, reason))
  end
  local users = {}
  each(payload, function(k, v)
    if k == "user" then
      users[#users + 1] = v
    end
  end)
  return users
end
