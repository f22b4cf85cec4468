package accounts

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeStore records the lifecycle's calls in order.
type fakeStore struct {
	rows    map[string]bool // address → blocked
	pending map[string]bool // tombstone → mail pending
	calls   []string
}

func (f *fakeStore) SetBlocked(_ context.Context, address string, blocked bool) error {
	f.calls = append(f.calls, "setblocked")
	if _, ok := f.rows[address]; !ok {
		return ErrNotFound
	}
	f.rows[address] = blocked
	return nil
}

func (f *fakeStore) Delete(_ context.Context, address string, tombstone []byte) error {
	f.calls = append(f.calls, "delete")
	if _, ok := f.rows[address]; !ok {
		return ErrNotFound
	}
	delete(f.rows, address)
	f.pending[string(tombstone)] = true
	return nil
}

func (f *fakeStore) MailPending(_ context.Context, tombstone []byte) (bool, error) {
	return f.pending[string(tombstone)], nil
}

func (f *fakeStore) MailRemoved(_ context.Context, tombstone []byte) error {
	f.calls = append(f.calls, "mailremoved")
	f.pending[string(tombstone)] = false
	return nil
}

func (f *fakeStore) HasTombstone(_ context.Context, tombstone []byte) (bool, error) {
	_, ok := f.pending[string(tombstone)]
	return ok, nil
}

func (f *fakeStore) Get(_ context.Context, address string) (*Account, error) {
	b, ok := f.rows[address]
	if !ok {
		return nil, ErrNotFound
	}
	return &Account{Address: address, Blocked: b}, nil
}

func (f *fakeStore) Stats(context.Context) (Stats, error) {
	return Stats{Accounts: int64(len(f.rows))}, nil
}

func (f *fakeStore) Each(_ context.Context, fn func(*Account) error) error {
	for a, b := range f.rows {
		if err := fn(&Account{Address: a, Blocked: b}); err != nil {
			return err
		}
	}
	return nil
}

const testAddr = "abcdefghi@chat.test"

func newLifecycle(t *testing.T) (*Lifecycle, *fakeStore, map[string]bool) {
	t.Helper()
	fs := &fakeStore{rows: map[string]bool{testAddr: false}, pending: map[string]bool{}}
	mail := map[string]bool{testAddr: true}
	l := &Lifecycle{
		Store: fs,
		Key:   TombstoneKey("a test key of at least 32 bytes!"),
		Kick: func(_ context.Context, a string) error {
			fs.calls = append(fs.calls, "kick")
			return nil
		},
		RemoveMail: func(_ context.Context, a string) error {
			fs.calls = append(fs.calls, "removemail")
			delete(mail, a)
			return nil
		},
		ListMail: func(context.Context) ([]string, error) {
			return slices.Sorted(maps.Keys(mail)), nil
		},
	}
	return l, fs, mail
}

// TestLifecycleSweep: mail that reappears after a deletion (a delivery under
// way, a missed notification) is removed by Sweep; the mail of accounts,
// and of addresses that never had one, stays.
func TestLifecycleSweep(t *testing.T) {
	l, fs, mail := newLifecycle(t)
	ctx := context.Background()
	if err := l.Delete(ctx, testAddr); err != nil {
		t.Fatal(err)
	}
	const other, stranger = "otheracct@chat.test", "strangers@chat.test"
	fs.rows[other] = false
	mail[testAddr], mail[other], mail[stranger], mail["Not An Address"] = true, true, true, true
	n, err := l.Sweep(ctx)
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d removed, %v", n, err)
	}
	if mail[testAddr] || !mail[other] || !mail[stranger] || !mail["Not An Address"] {
		t.Fatalf("after the sweep: %v", mail)
	}
}

func TestLifecycleBlock(t *testing.T) {
	l, fs, _ := newLifecycle(t)
	if err := l.Block(context.Background(), strings.ToUpper(testAddr)); err != nil {
		t.Fatal(err)
	}
	if !fs.rows[testAddr] || !slices.Equal(fs.calls, []string{"setblocked", "kick"}) {
		t.Fatalf("block: rows %v, calls %v", fs.rows, fs.calls)
	}
	if err := l.Unblock(context.Background(), testAddr); err != nil || fs.rows[testAddr] {
		t.Fatalf("unblock: %v, blocked %v", err, fs.rows[testAddr])
	}
	l.Kick = func(context.Context, string) error { return errors.New("doveadm failed") }
	if err := l.Block(context.Background(), testAddr); !errors.Is(err, ErrNotKicked) {
		t.Errorf("block with a failing kick: %v, want ErrNotKicked", err)
	}
	if err := l.Block(context.Background(), "other1234@chat.test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("block of no account: %v", err)
	}
	if err := l.Block(context.Background(), "no address"); err == nil || strings.Contains(err.Error(), "no address") {
		t.Errorf("block of a malformed address: %v", err)
	}
}

// Delete takes no longer than its steps: it never waits out a cache.
func TestLifecycleDelete(t *testing.T) {
	l, fs, mail := newLifecycle(t)
	start := time.Now()
	if err := l.Delete(context.Background(), testAddr); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("delete took %v", d)
	}
	want := []string{"setblocked", "kick", "delete", "removemail", "mailremoved"}
	if !slices.Equal(fs.calls, want) {
		t.Errorf("calls %v, want %v", fs.calls, want)
	}
	if len(fs.rows) != 0 || mail[testAddr] || fs.pending[string(l.Key.Hash(testAddr))] {
		t.Errorf("after delete: rows %v, mail %v, pending %v", fs.rows, mail, fs.pending)
	}
	if err := l.Delete(context.Background(), testAddr); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

// A deletion that stopped between the row and the mail leaves a pending
// tombstone, and deleting again finishes it.
func TestLifecycleDeleteResumes(t *testing.T) {
	l, fs, mail := newLifecycle(t)
	remove := l.RemoveMail
	l.RemoveMail = func(context.Context, string) error {
		return errors.New("disk on fire")
	}
	err := l.Delete(context.Background(), testAddr)
	if err == nil || strings.Contains(err.Error(), testAddr) {
		t.Fatalf("delete with failing mail removal: %v", err)
	}
	if len(fs.rows) != 0 || !fs.pending[string(l.Key.Hash(testAddr))] || !mail[testAddr] {
		t.Fatalf("after the failure: rows %v, pending %v, mail %v", fs.rows, fs.pending, mail)
	}
	l.RemoveMail = remove
	fs.calls = nil
	if err := l.Delete(context.Background(), testAddr); err != nil {
		t.Fatal(err)
	}
	if mail[testAddr] || fs.pending[string(l.Key.Hash(testAddr))] || !slices.Equal(fs.calls, []string{"setblocked", "removemail", "mailremoved"}) {
		t.Errorf("resumed delete: mail %v, pending %v, calls %v", mail, fs.pending, fs.calls)
	}
}

func TestRemoveMaildir(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, testAddr)
	if err := os.MkdirAll(filepath.Join(home, "new"), 0o755); err != nil {
		t.Fatal(err)
	}
	rm := RemoveMaildir(dir)
	for range 2 { // gone already is fine
		if err := rm(context.Background(), testAddr); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(home); !os.IsNotExist(err) {
		t.Errorf("home still there: %v", err)
	}
	if err := RemoveMaildir("")(context.Background(), testAddr); err == nil {
		t.Error("removal without a mailboxes_dir")
	}
}

// No account operation waits on a clock: a deletion is made visible to
// doveauth by a notification in its transaction, never by sleeping
// through a cache lifetime.
func TestNoSleep(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	// The check itself can fail.
	bad := filepath.Join(t.TempDir(), "bad.go")
	if err := os.WriteFile(bad, []byte("package x\nimport \"time\"\nfunc f() { time.Sleep(2 * time.Second) }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if len(sleeps(t, bad)) != 1 {
		t.Fatal("a time.Sleep call was not found")
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		if calls := sleeps(t, f); len(calls) > 0 {
			t.Errorf("%s sleeps at %v", f, calls)
		}
	}
}

// sleeps returns the positions of calls to time.Sleep in a Go file.
func sleeps(t *testing.T, path string) []string {
	t.Helper()
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var at []string
	ast.Inspect(f, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if id, ok := sel.X.(*ast.Ident); ok && id.Name == "time" && sel.Sel.Name == "Sleep" {
				at = append(at, fset.Position(n.Pos()).String())
			}
		}
		return true
	})
	return at
}
