package mailpolicy

import (
	"context"
	"strings"
	"testing"
)

// A malformed header line is reported by its number, not its text: a
// header names people, and the error is printed or logged.
func TestReplayErrorNamesNoOne(t *testing.T) {
	txn := testEngine(t, nil).Begin("", "carol@other.example")
	defer txn.Close()
	txn.Rcpt("bob@chat.example")
	_, err := Replay(context.Background(), txn, strings.NewReader("From: <carol@other.example>\r\nTo carol@other.example\r\n\r\nbody\r\n"))
	if err == nil || strings.Contains(err.Error(), "carol") || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("malformed header: %v, want line 2 and no address", err)
	}
}
