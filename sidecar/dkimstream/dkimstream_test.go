package dkimstream

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// signed returns a message with a body of n bytes, signed for
// sel._domainkey.chat.example, and the lookup that holds the key.
func signed(t *testing.T, n int) ([]byte, Map) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat(strings.Repeat("x", 76)+"\r\n", n/78+1)[:n]
	msg := "From: <alice@chat.example>\r\nTo: <bob@other.example>\r\nSubject: s\r\n\r\n" + body
	var b bytes.Buffer
	if err := dkim.Sign(&b, strings.NewReader(msg), &dkim.SignOptions{Domain: "chat.example", Selector: "sel", Signer: priv}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), Map{"sel._domainkey.chat.example": "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}
}

// feed writes msg in chunks as the milter receives it.
func feed(t *testing.T, v *Verifying, msg []byte) {
	t.Helper()
	for len(msg) > 0 {
		n := min(len(msg), 65535)
		if _, err := v.Write(msg[:n]); err != nil {
			t.Fatal(err)
		}
		msg = msg[n:]
	}
}

// TestVerify covers both ways a message is verified: held (small) and
// streamed to a goroutine (large).
func TestVerify(t *testing.T) {
	for _, size := range []int{4 << 10, heldLimit, 5 << 20} {
		msg, keys := signed(t, size)
		v := Verify(keys)
		feed(t, v, msg)
		if streamed := v.pw != nil; streamed != (len(msg) > heldLimit) {
			t.Errorf("%d bytes: streamed %v", len(msg), streamed)
		}
		if len(v.held) > heldLimit {
			t.Errorf("%d bytes held", len(v.held))
		}
		if got, err := v.Result(context.Background(), "chat.example"); err != nil || got != Pass {
			t.Errorf("%d bytes: %v %v", len(msg), got, err)
		}
		// Tampered: the body hash no longer matches.
		bad := bytes.Clone(msg)
		bad[len(bad)-3] ^= 1
		v = Verify(keys)
		feed(t, v, bad)
		if got, err := v.Result(context.Background(), "chat.example"); err != nil || got != Invalid {
			t.Errorf("%d bytes tampered: %v %v", len(msg), got, err)
		}
	}
}

// blocking is a lookup that answers only when its context ends.
type blocking struct{}

func (blocking) LookupTXT(ctx context.Context, name string) ([]string, error) {
	<-ctx.Done()
	return nil, &net.DNSError{Err: ctx.Err().Error(), Name: name, IsTimeout: true, IsTemporary: true}
}

// TestVerifyDeadline checks that the caller's context bounds the key
// lookups of a held message, and that an aborted streaming verifier ends.
// (A streaming verifier looks keys up before it reads the body, so its
// writer waits for the lookup, bounded by DNS.Timeout.)
func TestVerifyDeadline(t *testing.T) {
	base := runtime.NumGoroutine()
	msg, _ := signed(t, 4<<10)
	v := Verify(blocking{})
	feed(t, v, msg)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	got, err := v.Result(ctx, "chat.example")
	cancel()
	if got != TempFail {
		t.Errorf("lookup past the deadline: %v %v", got, err)
	}
	// An aborted message ends its verifier too.
	big, keys := signed(t, 1<<20)
	v = Verify(keys)
	feed(t, v, big[:len(big)/2])
	v.Abort()
	if _, err := v.Write([]byte("more")); !errors.Is(err, errAborted) {
		t.Errorf("write after abort: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > base {
		t.Errorf("%d goroutines left running", n-base)
	}
}
