package deltachat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// CodeMethodNotFound is the JSON-RPC error code for a method the server
// does not have, e.g. one added in a newer core.
const CodeMethodNotFound = -32601

// IsMethodNotFound reports whether err is the server's answer that it has
// no such method.
func IsMethodNotFound(err error) bool {
	var re *RPCError
	return errors.As(err, &re) && re.Code == CodeMethodNotFound
}

// FindVersionBinary returns the deltachat-rpc-server of an older core that
// scripts/install-deps put under .deltachat/<version>/, looked up like
// FindBinary from the working directory upwards.
func FindVersionBinary(version string) (string, error) {
	rel := filepath.Join(".deltachat", version, "node_modules", "@deltachat",
		"stdio-rpc-server-linux-x64", "deltachat-rpc-server")
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("deltachat: %w", err)
	}
	for {
		path := filepath.Join(dir, rel)
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("deltachat: %s not found above the working directory; run scripts/install-deps", rel)
		}
		dir = parent
	}
}

// Chat types as cores before 2.0 send them, as numbers.
var legacyChatTypes = map[int]string{
	100: "Single",
	120: "Group",
	140: "Mailinglist",
	160: "OutBroadcast",
	165: "InBroadcast",
}

// decodeChatType accepts a chat type as a name (core 2.0 and later), a
// number (earlier cores), or absent.
func decodeChatType(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err == nil {
		return name, nil
	}
	var n int
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("chatType %s: neither a name nor a number", raw)
	}
	if name, ok := legacyChatTypes[n]; ok {
		return name, nil
	}
	return strconv.Itoa(n), nil
}

// legacyConfig maps p onto the config keys that cores before the
// transport API use for the same settings.
func (p TransportParams) legacyConfig() map[string]string {
	security := map[Security]string{SecurityAutomatic: "0", SecuritySSL: "1", SecurityStartTLS: "2", SecurityPlain: "3"}
	checks := map[CertificateChecks]string{CertificateChecksAutomatic: "0", CertificateChecksStrict: "1", CertificateChecksAcceptInvalid: "3"}
	cfg := map[string]string{"addr": p.Addr, "mail_pw": p.Password}
	set := func(key, value string) {
		if value != "" {
			cfg[key] = value
		}
	}
	port := func(p uint16) string {
		if p == 0 {
			return ""
		}
		return strconv.Itoa(int(p))
	}
	set("mail_server", p.IMAPServer)
	set("mail_port", port(p.IMAPPort))
	set("mail_security", security[p.IMAPSecurity])
	set("mail_user", p.IMAPUser)
	set("send_server", p.SMTPServer)
	set("send_port", port(p.SMTPPort))
	set("send_security", security[p.SMTPSecurity])
	set("send_user", p.SMTPUser)
	set("send_pw", p.SMTPPassword)
	set("imap_certificate_checks", checks[p.CertificateChecks])
	set("smtp_certificate_checks", checks[p.CertificateChecks])
	return cfg
}

// SendReaction reacts to a message; no reactions removes the account's
// reaction. It returns the ID of the reaction message.
func (a *Account) SendReaction(ctx context.Context, msgID uint32, reactions ...string) (uint32, error) {
	var id uint32
	if reactions == nil {
		reactions = []string{}
	}
	err := a.call(ctx, "send_reaction", &id, msgID, reactions)
	return id, err
}

// SendEditRequest changes the text of a message the account sent.
func (a *Account) SendEditRequest(ctx context.Context, msgID uint32, text string) error {
	return a.call(ctx, "send_edit_request", nil, msgID, text)
}

// DeleteMessagesForAll deletes messages the account sent for every
// member of the chat.
func (a *Account) DeleteMessagesForAll(ctx context.Context, msgIDs []uint32) error {
	return a.call(ctx, "delete_messages_for_all", nil, msgIDs)
}

// RemoveContactFromChat removes a member from a group.
func (a *Account) RemoveContactFromChat(ctx context.Context, chatID, contactID uint32) error {
	return a.call(ctx, "remove_contact_from_chat", nil, chatID, contactID)
}

// CreateBroadcast creates a broadcast channel and returns its chat ID.
func (a *Account) CreateBroadcast(ctx context.Context, name string) (uint32, error) {
	var id uint32
	err := a.call(ctx, "create_broadcast", &id, name)
	return id, err
}

// SetChatVisibility pins ("Pinned"), archives ("Archived") or resets
// ("Normal") a chat; core tells the account's other devices in a sync
// message.
func (a *Account) SetChatVisibility(ctx context.Context, chatID uint32, visibility string) error {
	return a.call(ctx, "set_chat_visibility", nil, chatID, visibility)
}

// PlaceOutgoingCall starts a call in a one-to-one chat: core sends the
// offer (placeCallInfo, an SDP text for real UIs) as a chat message and
// returns that message's ID.
func (a *Account) PlaceOutgoingCall(ctx context.Context, chatID uint32, placeCallInfo string, video bool) (uint32, error) {
	var id uint32
	err := a.call(ctx, "place_outgoing_call", &id, chatID, placeCallInfo, video)
	return id, err
}

// SelfChat returns the account's chat with itself ("Saved messages").
func (a *Account) SelfChat(ctx context.Context) (uint32, error) {
	return a.CreateChatByContactID(ctx, ContactSelf)
}
