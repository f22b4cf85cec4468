package deltachat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// maxQueuedEvents bounds the events kept per account. Core emits an Info
// event for every log line, so this must be large enough that a test's
// interesting events survive a busy few seconds.
const maxQueuedEvents = 20000

// Event is one core event. Only the fields that the event kind carries are
// set; Raw holds the whole payload for the rest.
type Event struct {
	AccountID uint32 `json:"-"`
	// Kind is the event type, e.g. "IncomingMsg" or "SecurejoinJoinerProgress".
	Kind string `json:"kind"`
	// Msg is the text of Info, Warning, Error and similar events.
	Msg       string `json:"msg"`
	ChatID    uint32 `json:"chatId"`
	MsgID     uint32 `json:"msgId"`
	ContactID uint32 `json:"contactId"`
	// Progress is set by ConfigureProgress, ImexProgress and the Securejoin
	// events: 0 means failure, 1000 success.
	Progress int             `json:"progress"`
	Comment  string          `json:"comment"`
	ChatType string          `json:"chatType"`
	Raw      json.RawMessage `json:"-"`
}

// UnmarshalJSON decodes the known fields and keeps the payload in Raw.
func (e *Event) UnmarshalJSON(b []byte) error {
	type plain Event // drops the method, so no recursion
	var v struct {
		plain
		ChatType json.RawMessage `json:"chatType"` // a number before core 2.0
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*e = Event(v.plain)
	t, err := decodeChatType(v.ChatType)
	if err != nil {
		return err
	}
	e.ChatType = t
	e.Raw = append(json.RawMessage(nil), b...)
	return nil
}

func (e Event) String() string {
	if e.Msg != "" {
		return fmt.Sprintf("[account %d] %s: %s", e.AccountID, e.Kind, e.Msg)
	}
	return fmt.Sprintf("[account %d] %s", e.AccountID, e.Raw)
}

// eventQueue keeps the recent events of one account. Each event can be
// taken by at most one WaitFor; events nobody asked for stay, so an event
// is not lost when it arrives before the test starts waiting for it.
type eventQueue struct {
	mu      sync.Mutex
	events  []queuedEvent
	nextSeq uint64
	changed chan struct{} // closed and replaced on every new event
}

type queuedEvent struct {
	seq   uint64
	event Event
	taken bool
}

func newEventQueue() *eventQueue {
	return &eventQueue{changed: make(chan struct{})}
}

func (q *eventQueue) push(ev Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.events) >= maxQueuedEvents {
		// Drop the oldest tenth at once rather than shifting on every event.
		q.events = append(q.events[:0], q.events[maxQueuedEvents/10:]...)
	}
	q.events = append(q.events, queuedEvent{seq: q.nextSeq, event: ev})
	q.nextSeq++
	close(q.changed)
	q.changed = make(chan struct{})
}

// take removes and returns the first event from seq on that matches.
// Otherwise it returns the sequence number to resume from and a channel
// that is closed when more events arrive.
func (q *eventQueue) take(from uint64, match func(Event) bool) (ev Event, ok bool, next uint64, changed <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	start := 0
	if len(q.events) > 0 && from > q.events[0].seq {
		start = int(from - q.events[0].seq) // seqs are consecutive
	}
	for i := start; i < len(q.events); i++ {
		e := &q.events[i]
		if e.taken {
			continue
		}
		if match(e.event) {
			e.taken = true
			return e.event, true, 0, nil
		}
	}
	return Event{}, false, q.nextSeq, q.changed
}

func (q *eventQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.events)
}

func (q *eventQueue) discard() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.events = nil
}

func (r *RPC) queue(accountID uint32) *eventQueue {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.queues[accountID]
	if q == nil {
		q = newEventQueue()
		r.queues[accountID] = q
	}
	return q
}

// pumpEvents keeps one get_next_event call in flight until the server
// stops, and files each event under its account.
func (r *RPC) pumpEvents() {
	defer close(r.pumpDone)
	for {
		var raw struct {
			ContextID uint32 `json:"contextId"`
			Event     Event  `json:"event"`
		}
		if err := r.Call(context.Background(), "get_next_event", nil, &raw); err != nil {
			if !errors.Is(err, ErrClosed) {
				r.logf("deltachat: event pump stopped: %v", err)
			}
			return
		}
		ev := raw.Event
		ev.AccountID = raw.ContextID
		switch ev.Kind {
		case "Warning", "Error", "ErrorSelfNotInGroup":
			r.logf("%v", ev)
		case "Info":
			if r.opts.Verbose {
				r.logf("%v", ev)
			}
		}
		r.queue(ev.AccountID).push(ev)
	}
}

// WaitFor returns the oldest event of a that matches and has not been
// returned by an earlier WaitFor, waiting for it if necessary. Events that
// do not match stay queued for later calls.
func (a *Account) WaitFor(ctx context.Context, match func(Event) bool) (Event, error) {
	var from uint64
	for {
		ev, ok, next, changed := a.events.take(from, match)
		if ok {
			return ev, nil
		}
		from = next
		select {
		case <-changed:
		case <-a.rpc.done:
			// Events filed before the pump stopped may still match.
			if ev, ok, _, _ := a.events.take(from, match); ok {
				return ev, nil
			}
			return Event{}, fmt.Errorf("deltachat: waiting for event: %w", a.rpc.connErr())
		case <-ctx.Done():
			return Event{}, fmt.Errorf("deltachat: waiting for event: %w", ctx.Err())
		}
	}
}

// DiscardEvents forgets all events of a received so far, so that later
// waits only see new ones.
func (a *Account) DiscardEvents() {
	a.events.discard()
}

// WaitIncomingMsg waits for an IncomingMsg event and returns that message.
func (a *Account) WaitIncomingMsg(ctx context.Context) (*Message, error) {
	ev, err := a.WaitFor(ctx, func(ev Event) bool { return ev.Kind == "IncomingMsg" })
	if err != nil {
		return nil, err
	}
	return a.Message(ctx, ev.MsgID)
}

// WaitMsgsChanged waits for a MsgsChanged event in chat chatID, or in any
// chat if chatID is 0.
func (a *Account) WaitMsgsChanged(ctx context.Context, chatID uint32) (Event, error) {
	return a.WaitFor(ctx, func(ev Event) bool {
		return ev.Kind == "MsgsChanged" && (chatID == 0 || ev.ChatID == chatID)
	})
}

// WaitMsgDelivered waits until message msgID has been sent (MsgDelivered),
// or returns an error with core's reason if sending failed (MsgFailed).
// A rejection by our SMTP server shows up here.
func (a *Account) WaitMsgDelivered(ctx context.Context, msgID uint32) error {
	ev, err := a.WaitFor(ctx, func(ev Event) bool {
		return (ev.Kind == "MsgDelivered" || ev.Kind == "MsgFailed") && ev.MsgID == msgID
	})
	if err != nil {
		return err
	}
	if ev.Kind == "MsgFailed" {
		msg, err := a.Message(ctx, msgID)
		if err != nil {
			return fmt.Errorf("deltachat: message %d failed", msgID)
		}
		return fmt.Errorf("deltachat: message %d failed: %s", msgID, msg.Error)
	}
	return nil
}

// WaitSecurejoinJoinerDone waits until the joining side (the one that
// called SecureJoin) reports SecurejoinJoinerProgress 1000. Progress 0,
// which core has used to signal failure, is returned as an error.
func (a *Account) WaitSecurejoinJoinerDone(ctx context.Context) error {
	return a.waitSecurejoin(ctx, "SecurejoinJoinerProgress")
}

// WaitSecurejoinInviterDone waits until the inviting side (the owner of the
// QR code) reports SecurejoinInviterProgress 1000, which 2.62 sends only
// on success.
func (a *Account) WaitSecurejoinInviterDone(ctx context.Context) error {
	return a.waitSecurejoin(ctx, "SecurejoinInviterProgress")
}

func (a *Account) waitSecurejoin(ctx context.Context, kind string) error {
	ev, err := a.WaitFor(ctx, func(ev Event) bool {
		return ev.Kind == kind && (ev.Progress == 0 || ev.Progress == 1000)
	})
	if err != nil {
		return err
	}
	if ev.Progress == 0 {
		return fmt.Errorf("deltachat: account %d: %s failed (contact %d)", a.ID, kind, ev.ContactID)
	}
	return nil
}
