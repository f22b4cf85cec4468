-- Dovecot push_notification Lua driver of a chatmail server: install as
-- /etc/dovecot/push-notification.lua (PUSH_LUA of 90-chatmail.conf, which
-- loads it in LMTP). No placeholders. scripts/stack installs this same file;
-- deploy/dovecot24's is a link to it.
--
-- On each new message it sets /private/messagenew (to "") on the message's
-- mailbox. Dovecot stores METADATA in chatmail-metadata's dict
-- (mail_attribute_dict; 2.4: mail_attribute), so this reaches it as a dict
-- transaction of the recipient with the key priv/<mailbox guid>/messagenew,
-- on LMTP's own dict name (metadata-delivery), and chatmail-metadata
-- notifies the recipient's devices (their tokens, set by SETMETADATA).
-- Nothing of the message leaves Dovecot: its From address is only compared
-- with the recipient's, here. The same script serves Dovecot 2.3 and 2.4.
--
-- A copy of a message the user sent (Delta Chat's copy to self, delivered
-- like any other) wakes no one: the user's own device sent it.

function dovecot_lua_notify_begin_txn(user)
  return user
end

function dovecot_lua_notify_event_message_new(user, event)
  if event.from_address ~= nil and string.lower(event.from_address) == string.lower(user.username) then
    return
  end
  local mbox = user:mailbox(event.mailbox)
  mbox:sync()
  -- Freed even when the dict fails (chatmail-metadata down); the error
  -- then goes to Dovecot's log and the delivery goes on.
  local ok, err = pcall(mbox.metadata_set, mbox, "/private/messagenew", "")
  mbox:free()
  if not ok then
    error(err, 0)
  end
end

function dovecot_lua_notify_end_txn(ctx, success)
end
