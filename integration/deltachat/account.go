package deltachat

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
)

// ContactSelf is the contact ID core uses for the account itself.
const ContactSelf = 1

// Account is one Delta Chat profile inside an rpc server.
type Account struct {
	ID     uint32
	rpc    *RPC
	events *eventQueue
}

// Account returns a handle for an existing account.
func (r *RPC) Account(id uint32) *Account {
	return &Account{ID: id, rpc: r, events: r.queue(id)}
}

// AddAccount creates a new, unconfigured account.
func (r *RPC) AddAccount(ctx context.Context) (*Account, error) {
	var id uint32
	if err := r.Call(ctx, "add_account", nil, &id); err != nil {
		return nil, err
	}
	return r.Account(id), nil
}

// SystemInfo returns get_system_info; the core version is under
// "deltachat_core_version", e.g. "v2.62.0".
func (r *RPC) SystemInfo(ctx context.Context) (map[string]string, error) {
	var info map[string]string
	err := r.Call(ctx, "get_system_info", nil, &info)
	return info, err
}

// call prepends the account ID to params, as almost every method wants.
func (a *Account) call(ctx context.Context, method string, result any, params ...any) error {
	return a.rpc.Call(ctx, method, append([]any{a.ID}, params...), result)
}

// Security is how a connection to a mail server is secured.
type Security string

const (
	SecurityAutomatic Security = "automatic"
	SecuritySSL       Security = "ssl" // implicit TLS
	SecurityStartTLS  Security = "starttls"
	SecurityPlain     Security = "plain"
)

// CertificateChecks says how strictly TLS certificates are checked.
type CertificateChecks string

const (
	CertificateChecksAutomatic     CertificateChecks = "automatic"
	CertificateChecksStrict        CertificateChecks = "strict"
	CertificateChecksAcceptInvalid CertificateChecks = "acceptInvalidCertificates"
)

// TransportParams is core's EnteredLoginParam. Set the servers, ports and
// security explicitly: if all are empty, core tries autoconfig over HTTPS.
type TransportParams struct {
	Addr              string            `json:"addr"`
	Password          string            `json:"password"`
	IMAPServer        string            `json:"imapServer,omitempty"`
	IMAPPort          uint16            `json:"imapPort,omitempty"`
	IMAPSecurity      Security          `json:"imapSecurity,omitempty"`
	IMAPUser          string            `json:"imapUser,omitempty"`
	SMTPServer        string            `json:"smtpServer,omitempty"`
	SMTPPort          uint16            `json:"smtpPort,omitempty"`
	SMTPSecurity      Security          `json:"smtpSecurity,omitempty"`
	SMTPUser          string            `json:"smtpUser,omitempty"`
	SMTPPassword      string            `json:"smtpPassword,omitempty"`
	CertificateChecks CertificateChecks `json:"certificateChecks,omitempty"`
}

// AddOrUpdateTransport configures the account for a mail server. It returns
// when configuration has finished, with core's reason if it failed.
// Call StartIO afterwards.
//
// Cores older than the transport API (1.159 and earlier) lack
// add_or_update_transport; for them it sets the equivalent legacy config
// keys and runs configure.
func (a *Account) AddOrUpdateTransport(ctx context.Context, params TransportParams) error {
	err := a.call(ctx, "add_or_update_transport", nil, params)
	if !IsMethodNotFound(err) {
		return err
	}
	if err := a.BatchSetConfig(ctx, params.legacyConfig()); err != nil {
		return err
	}
	return a.call(ctx, "configure", nil)
}

// StartIO starts the IMAP and SMTP loops.
func (a *Account) StartIO(ctx context.Context) error {
	return a.call(ctx, "start_io", nil)
}

// StopIO stops the IMAP and SMTP loops.
func (a *Account) StopIO(ctx context.Context) error {
	return a.call(ctx, "stop_io", nil)
}

// SetConfig sets a config key such as "displayname".
func (a *Account) SetConfig(ctx context.Context, key, value string) error {
	return a.call(ctx, "set_config", nil, key, value)
}

// BatchSetConfig sets several config keys at once.
func (a *Account) BatchSetConfig(ctx context.Context, config map[string]string) error {
	return a.call(ctx, "batch_set_config", nil, config)
}

// Config returns the value of a config key, or "" if it is unset.
// Unknown keys are an error.
func (a *Account) Config(ctx context.Context, key string) (string, error) {
	var value *string
	if err := a.call(ctx, "get_config", &value, key); err != nil {
		return "", err
	}
	if value == nil {
		return "", nil
	}
	return *value, nil
}

// Info returns get_info, core's diagnostic key-value list (e.g.
// "imap_server_comment").
func (a *Account) Info(ctx context.Context) (map[string]string, error) {
	var info map[string]string
	err := a.call(ctx, "get_info", &info)
	return info, err
}

// CreateContact creates a contact for an email address; name may be empty.
// It returns the contact ID.
func (a *Account) CreateContact(ctx context.Context, addr, name string) (uint32, error) {
	var id uint32
	err := a.call(ctx, "create_contact", &id, addr, nullIfEmpty(name))
	return id, err
}

// Contact is the part of core's Contact that tests look at.
type Contact struct {
	ID      uint32 `json:"id"`
	Address string `json:"address"`
	// DisplayName is the name the account shows: the one it gave the
	// contact, else the one the contact sent, else the address.
	DisplayName string `json:"displayName"`
	// IsKeyContact: the contact is known by its key, as after SecureJoin,
	// not by its address only.
	IsKeyContact bool `json:"isKeyContact"`
	E2EEAvail    bool `json:"e2eeAvail"`
	IsBlocked    bool `json:"isBlocked"`
}

// Contact returns what the account knows about a contact.
func (a *Account) Contact(ctx context.Context, contactID uint32) (*Contact, error) {
	var c Contact
	if err := a.call(ctx, "get_contact", &c, contactID); err != nil {
		return nil, err
	}
	return &c, nil
}

// LookupContactID returns the ID of the contact with address addr, and
// false if the account has none.
func (a *Account) LookupContactID(ctx context.Context, addr string) (uint32, bool, error) {
	var id *uint32
	if err := a.call(ctx, "lookup_contact_id_by_addr", &id, addr); err != nil {
		return 0, false, err
	}
	if id == nil {
		return 0, false, nil
	}
	return *id, true, nil
}

// CreateChatByContactID returns the one-to-one chat with a contact,
// creating it if needed.
func (a *Account) CreateChatByContactID(ctx context.Context, contactID uint32) (uint32, error) {
	var id uint32
	err := a.call(ctx, "create_chat_by_contact_id", &id, contactID)
	return id, err
}

// CreateGroupChat creates an encrypted group that has only the account
// itself as member. Only key contacts (e.g. from SecureJoin) can be added.
func (a *Account) CreateGroupChat(ctx context.Context, name string) (uint32, error) {
	var id uint32
	// The third parameter, protect, is deprecated; core wants false.
	err := a.call(ctx, "create_group_chat", &id, name, false)
	return id, err
}

// AddContactToChat adds a contact to a group.
func (a *Account) AddContactToChat(ctx context.Context, chatID, contactID uint32) error {
	return a.call(ctx, "add_contact_to_chat", nil, chatID, contactID)
}

// AcceptChat accepts a contact request chat so that replies are possible.
func (a *Account) AcceptChat(ctx context.Context, chatID uint32) error {
	return a.call(ctx, "accept_chat", nil, chatID)
}

// Chat is the part of core's BasicChat that tests look at.
type Chat struct {
	ID               uint32 `json:"id"`
	Name             string `json:"name"`
	ChatType         string `json:"chatType"` // "Single", "Group", ...
	IsEncrypted      bool   `json:"isEncrypted"`
	IsContactRequest bool   `json:"isContactRequest"`
	IsUnpromoted     bool   `json:"isUnpromoted"`
	IsSelfTalk       bool   `json:"isSelfTalk"`
	// IsProtected is what cores before 2.0 report instead of IsEncrypted:
	// a verified group or one-to-one chat.
	IsProtected bool `json:"isProtected"`
}

// UnmarshalJSON decodes a BasicChat, also from cores before 2.0 whose
// chatType is a number.
func (c *Chat) UnmarshalJSON(b []byte) error {
	type plain Chat // drops the method, so no recursion
	var v struct {
		plain
		ChatType json.RawMessage `json:"chatType"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*c = Chat(v.plain)
	t, err := decodeChatType(v.ChatType)
	c.ChatType = t
	return err
}

// Chat returns basic information about a chat.
func (a *Account) Chat(ctx context.Context, chatID uint32) (*Chat, error) {
	var chat Chat
	if err := a.call(ctx, "get_basic_chat_info", &chat, chatID); err != nil {
		return nil, err
	}
	return &chat, nil
}

// SecureJoinQR returns an invitation link (https://i.delta.chat/#...). With
// chatID 0 it invites to a one-to-one chat, otherwise to that group.
// Cores before 1.140 only have get_chat_securejoin_qr_code_svg, which
// returns the link together with an SVG image of it.
func (a *Account) SecureJoinQR(ctx context.Context, chatID uint32) (string, error) {
	var qr string
	var chat any // null means "setup contact"
	if chatID != 0 {
		chat = chatID
	}
	err := a.call(ctx, "get_chat_securejoin_qr_code", &qr, chat)
	if !IsMethodNotFound(err) {
		return qr, err
	}
	var pair []string
	if err := a.call(ctx, "get_chat_securejoin_qr_code_svg", &pair, chat); err != nil {
		return "", err
	}
	if len(pair) != 2 {
		return "", fmt.Errorf("get_chat_securejoin_qr_code_svg: got %d values, want link and SVG", len(pair))
	}
	return pair[0], nil
}

// SecureJoin starts joining with an invitation from SecureJoinQR and returns
// the chat ID at once; the handshake runs in the background, see
// WaitSecurejoinJoinerDone and WaitSecurejoinInviterDone.
func (a *Account) SecureJoin(ctx context.Context, qr string) (uint32, error) {
	var chatID uint32
	err := a.call(ctx, "secure_join", &chatID, qr)
	return chatID, err
}

// SendText queues a text message and returns its ID.
func (a *Account) SendText(ctx context.Context, chatID uint32, text string) (uint32, error) {
	var id uint32
	err := a.call(ctx, "misc_send_text_message", &id, chatID, text)
	return id, err
}

// MessageData is what SendMsg sends. File is a path that core copies into
// its blob directory; FileName is the name shown to the recipient.
type MessageData struct {
	Text     string `json:"text,omitempty"`
	File     string `json:"file,omitempty"`
	FileName string `json:"filename,omitempty"`
	// ViewType such as "File" or "Image"; empty lets core choose.
	ViewType string `json:"viewtype,omitempty"`
}

// SendMsg queues a message, possibly with an attachment, and returns its ID.
func (a *Account) SendMsg(ctx context.Context, chatID uint32, data MessageData) (uint32, error) {
	var id uint32
	err := a.call(ctx, "send_msg", &id, chatID, data)
	return id, err
}

// Message is the part of core's Message that tests look at.
type Message struct {
	ID          uint32 `json:"id"`
	ChatID      uint32 `json:"chatId"`
	FromID      uint32 `json:"fromId"`
	Text        string `json:"text"`
	Subject     string `json:"subject"`
	ViewType    string `json:"viewType"`
	State       int    `json:"state"` // see the MsgState constants
	ShowPadlock bool   `json:"showPadlock"`
	IsInfo      bool   `json:"isInfo"`
	File        string `json:"file"` // path in the blob directory
	FileName    string `json:"fileName"`
	FileBytes   uint64 `json:"fileBytes"`
	Error       string `json:"error"` // why sending or receiving failed
	// DownloadState says whether the message is there in full, see the
	// Download constants. Core shows a message with a large attachment at
	// once from a small pre-message and fetches the rest separately.
	DownloadState string `json:"downloadState"`
}

// Download states, from core's DownloadState.
const (
	DownloadDone           = "Done"
	DownloadAvailable      = "Available" // not fetched yet
	DownloadInProgress     = "InProgress"
	DownloadFailure        = "Failure"
	DownloadUndecipherable = "Undecipherable"
)

// Message states, from core's MessageState.
const (
	MsgStateInFresh      = 10
	MsgStateInNoticed    = 13
	MsgStateInSeen       = 16
	MsgStateOutPending   = 20
	MsgStateOutFailed    = 24
	MsgStateOutDelivered = 26
)

// Message returns one message.
func (a *Account) Message(ctx context.Context, msgID uint32) (*Message, error) {
	var msg Message
	if err := a.call(ctx, "get_message", &msg, msgID); err != nil {
		return nil, err
	}
	return &msg, nil
}

// Messages returns several messages by ID. It fails if any of them could
// not be loaded.
func (a *Account) Messages(ctx context.Context, msgIDs []uint32) (map[uint32]*Message, error) {
	// Each value is a Message with kind "message", or {kind:"loadingError",
	// error} whose error field collides with Message.Error.
	var results map[string]struct {
		Kind string `json:"kind"`
		Message
	}
	if err := a.call(ctx, "get_messages", &results, msgIDs); err != nil {
		return nil, err
	}
	msgs := make(map[uint32]*Message, len(results))
	for key, res := range results {
		id, err := strconv.ParseUint(key, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("get_messages: bad message ID %q", key)
		}
		if res.Kind != "message" {
			return nil, fmt.Errorf("get_messages: message %d: %s: %s", id, res.Kind, res.Error)
		}
		msgs[uint32(id)] = &res.Message
	}
	return msgs, nil
}

// MessageIDs returns the IDs of all messages in a chat, oldest first.
func (a *Account) MessageIDs(ctx context.Context, chatID uint32) ([]uint32, error) {
	var ids []uint32
	// infoOnly is deprecated, addDaymarker would mix in marker IDs.
	err := a.call(ctx, "get_message_ids", &ids, chatID, false, false)
	return ids, err
}

// ICEServer is one WebRTC ICE server as core hands it to UIs.
type ICEServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username"`
	Credential string   `json:"credential"`
}

// ICEServers returns the TURN servers core derived from the server's
// IMAP METADATA, or core's public fallback servers if it found none and
// can resolve them.
func (a *Account) ICEServers(ctx context.Context) ([]ICEServer, error) {
	// ice_servers returns a JSON document inside a JSON string.
	var doc string
	if err := a.call(ctx, "ice_servers", &doc); err != nil {
		return nil, err
	}
	var servers []ICEServer
	if err := json.Unmarshal([]byte(doc), &servers); err != nil {
		return nil, fmt.Errorf("ice_servers: decoding %q: %w", doc, err)
	}
	return servers, nil
}

func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
