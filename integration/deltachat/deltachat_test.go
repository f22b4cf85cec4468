package deltachat

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// wantCoreVersion is the version CI installs; see InstallHint.
const wantCoreVersion = "v2.62.0"

// startRPC runs a real rpc server in a temporary directory. A missing
// binary fails the test: these tests exist to prove the binary works.
func startRPC(t *testing.T) *RPC {
	t.Helper()
	binary, err := FindBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rpc, err := Start(ctx, Options{
		Binary:      binary,
		AccountsDir: filepath.Join(t.TempDir(), "accounts"),
		Log:         t.Output(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rpc.Close(); err != nil {
			t.Error(err)
		}
	})
	return rpc
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSystemInfo(t *testing.T) {
	rpc := startRPC(t)
	info, err := rpc.SystemInfo(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := info["deltachat_core_version"]; got != wantCoreVersion {
		t.Errorf("deltachat_core_version = %q, want %q (system info: %v)", got, wantCoreVersion, info)
	}
}

func TestConfigRoundTrip(t *testing.T) {
	ctx := testContext(t)
	rpc := startRPC(t)
	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if acc.ID == 0 {
		t.Fatal("add_account returned ID 0")
	}
	if got, err := acc.Config(ctx, "displayname"); err != nil || got != "" {
		t.Fatalf("displayname before setting = %q, %v; want empty", got, err)
	}
	if err := acc.SetConfig(ctx, "displayname", "Alice Ünicode"); err != nil {
		t.Fatal(err)
	}
	if got, err := acc.Config(ctx, "displayname"); err != nil || got != "Alice Ünicode" {
		t.Fatalf("displayname = %q, %v; want %q", got, err, "Alice Ünicode")
	}
	if err := acc.BatchSetConfig(ctx, map[string]string{"selfstatus": "testing"}); err != nil {
		t.Fatal(err)
	}
	if got, err := acc.Config(ctx, "selfstatus"); err != nil || got != "testing" {
		t.Fatalf("selfstatus = %q, %v; want %q", got, err, "testing")
	}
}

func TestUnknownMethod(t *testing.T) {
	rpc := startRPC(t)
	err := rpc.Call(testContext(t), "no_such_method", nil, nil)
	var rpcErr *RPCError
	if !errors.As(err, &rpcErr) {
		t.Fatalf("error = %v (%T), want *RPCError", err, err)
	}
	if rpcErr.Code != -32601 {
		t.Errorf("code = %d, want -32601 (method not found)", rpcErr.Code)
	}
}

func TestAccountErrorIsRPCError(t *testing.T) {
	rpc := startRPC(t)
	_, err := rpc.Account(42).Config(testContext(t), "displayname")
	var rpcErr *RPCError
	if !errors.As(err, &rpcErr) {
		t.Fatalf("error = %v, want *RPCError for a missing account", err)
	}
}

func TestConcurrentCalls(t *testing.T) {
	ctx := testContext(t)
	rpc := startRPC(t)
	errs := make(chan error, 20)
	for range cap(errs) {
		go func() {
			_, err := rpc.SystemInfo(ctx)
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// TestEventBeforeWait checks that an event the pump filed before WaitFor
// was called is still found: a fresh account logs Info events at once.
func TestEventBeforeWait(t *testing.T) {
	ctx := testContext(t)
	rpc := startRPC(t)
	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for acc.events.len() == 0 {
		if ctx.Err() != nil {
			t.Fatal("no event for a new account")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ev, err := acc.WaitFor(ctx, func(Event) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	if ev.AccountID != acc.ID || ev.Kind == "" || len(ev.Raw) == 0 {
		t.Errorf("event = %+v", ev)
	}

	acc.DiscardEvents()
	shortCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := acc.WaitFor(shortCtx, func(ev Event) bool { return ev.Kind == "no such kind" }); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitFor an event that never comes = %v, want deadline exceeded", err)
	}
}

// TestEventQueueTakesOnce checks that each event satisfies one WaitFor and
// that events skipped by one WaitFor remain for the next.
func TestEventQueueTakesOnce(t *testing.T) {
	q := newEventQueue()
	for _, kind := range []string{"A", "B", "C"} {
		q.push(Event{Kind: kind})
	}
	anyEvent := func(Event) bool { return true }
	isB := func(ev Event) bool { return ev.Kind == "B" }
	for _, step := range []struct {
		match func(Event) bool
		want  string
	}{{isB, "B"}, {anyEvent, "A"}, {anyEvent, "C"}} {
		ev, ok, _, _ := q.take(0, step.match)
		if !ok || ev.Kind != step.want {
			t.Fatalf("take = %q, %v; want %q", ev.Kind, ok, step.want)
		}
	}
	if ev, ok, next, _ := q.take(0, anyEvent); ok || next != 3 {
		t.Errorf("take from drained queue = %q, %v, next %d; want nothing, next 3", ev.Kind, ok, next)
	}
}

// TestDeviceMessageWithFile covers MessageData with an attachment, the
// Message fields and MsgsChanged without a mail server: device messages
// are created locally. send_msg takes the same MessageData.
func TestDeviceMessageWithFile(t *testing.T) {
	ctx := testContext(t)
	rpc := startRPC(t)
	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "upload.bin")
	content := []byte("attachment body\n")
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	data := MessageData{Text: "with file", File: path, FileName: "report.txt"}
	var msgID uint32
	if err := acc.call(ctx, "add_device_message", &msgID, "test-label", data); err != nil {
		t.Fatal(err)
	}
	msg, err := acc.Message(ctx, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if msg.ID != msgID || msg.Text != "with file" || msg.FileName != "report.txt" || msg.FileBytes != uint64(len(content)) || msg.DownloadState != DownloadDone {
		t.Errorf("message = %+v", msg)
	}
	if got, err := os.ReadFile(msg.File); err != nil || string(got) != string(content) {
		t.Errorf("blob %q = %q, %v; want %q", msg.File, got, err, content)
	}
	if _, err := acc.WaitMsgsChanged(ctx, msg.ChatID); err != nil {
		t.Fatal(err)
	}

	msgs, err := acc.Messages(ctx, []uint32{msgID})
	if err != nil {
		t.Fatal(err)
	}
	if msgs[msgID] == nil || msgs[msgID].Text != "with file" {
		t.Errorf("get_messages = %v", msgs)
	}
	if _, err := acc.Messages(ctx, []uint32{msgID, 99999}); err == nil {
		t.Error("get_messages with a missing message did not fail")
	}
	ids, err := acc.MessageIDs(ctx, msg.ChatID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) == 0 || ids[len(ids)-1] != msgID {
		t.Errorf("message IDs = %v, want ending in %d", ids, msgID)
	}
	chat, err := acc.Chat(ctx, msg.ChatID)
	if err != nil {
		t.Fatal(err)
	}
	if chat.ID != msg.ChatID || chat.Name == "" {
		t.Errorf("chat = %+v", chat)
	}
}

// TestLocalWrappers covers wrappers whose parameter shapes core checks
// without a mail server.
func TestLocalWrappers(t *testing.T) {
	ctx := testContext(t)
	rpc := startRPC(t)
	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	groupID, err := acc.CreateGroupChat(ctx, "group")
	if err != nil {
		t.Fatal(err)
	}
	if chat, err := acc.Chat(ctx, groupID); err != nil || chat.ChatType != "Group" || !chat.IsEncrypted || !chat.IsUnpromoted {
		t.Errorf("group chat = %+v, %v", chat, err)
	}
	contactID, err := acc.CreateContact(ctx, "bob@example.org", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acc.CreateChatByContactID(ctx, contactID); err != nil {
		t.Fatal(err)
	}
	if c, err := acc.Contact(ctx, contactID); err != nil || c.ID != contactID || c.Address != "bob@example.org" || c.IsKeyContact || c.E2EEAvail {
		t.Errorf("contact = %+v, %v; want bob@example.org known by address only", c, err)
	}
	if id, ok, err := acc.LookupContactID(ctx, "bob@example.org"); err != nil || !ok || id != contactID {
		t.Errorf("LookupContactID(bob) = %d, %v, %v; want %d", id, ok, err, contactID)
	}
	if _, ok, err := acc.LookupContactID(ctx, "nobody@example.org"); err != nil || ok {
		t.Errorf("LookupContactID(nobody) = %v, %v; want not found", ok, err)
	}
	servers, err := acc.ICEServers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ICE servers without a transport: %+v", servers)
	info, err := acc.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info["deltachat_core_version"] != wantCoreVersion {
		t.Errorf("get_info deltachat_core_version = %q", info["deltachat_core_version"])
	}
}

func TestCloseStopsProcess(t *testing.T) {
	before := runtime.NumGoroutine()
	binary, err := FindBinary()
	if err != nil {
		t.Fatal(err)
	}
	rpc, err := Start(testContext(t), Options{Binary: binary, AccountsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	pid := rpc.cmd.Process.Pid
	if err := rpc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process %d still exists after Close (kill 0: %v)", pid, err)
	}
	if err := rpc.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := rpc.Call(testContext(t), "get_system_info", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Call after Close = %v, want ErrClosed", err)
	}
	// Goroutines of exec and of the runtime may take a moment to finish.
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before Start, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}
