package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// script serves one connection: it answers each line it reads with the
// reply the answer function gives, and records what it read.
func script(t *testing.T, answer func(line string) string) (addr string, got chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	got = make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var rec strings.Builder
		defer func() { got <- rec.String() }()
		br := bufio.NewReader(c)
		_, _ = c.Write([]byte("220 ready\r\n"))
		inData := false
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				return
			}
			rec.WriteString(l)
			if inData {
				if l != ".\r\n" {
					continue
				}
				inData = false
			}
			a := answer(strings.TrimRight(l, "\r\n"))
			if l == "DATA\r\n" && strings.HasPrefix(a, "354") {
				inData = true
			}
			if a != "" {
				_, _ = c.Write([]byte(a))
			}
			if l == "QUIT\r\n" {
				return
			}
		}
	}()
	return ln.Addr().String(), got
}

func TestTransaction(t *testing.T) {
	addr, got := script(t, func(l string) string {
		switch {
		case strings.HasPrefix(l, "LHLO"):
			return "250-host\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
		case l == "RCPT TO:<nobody@x.example>":
			return "550 5.1.1 <nobody@x.example> User doesn't exist\r\n"
		case l == "DATA":
			return "354 go\r\n"
		case l == ".":
			return "250 2.0.0 <a@x.example> saved\r\n452 4.2.2 <b@x.example> Mailbox is full\r\n"
		case l == "QUIT":
			return "221 bye\r\n"
		}
		return "250 ok\r\n"
	})
	c, err := Dial(context.Background(), "tcp", addr, "test", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("s@y.example"); err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{"a@x.example", "b@x.example"} {
		if err := c.Rcpt(r); err != nil {
			t.Fatal(err)
		}
	}
	var r *Reply
	if err := c.Rcpt("nobody@x.example"); !errors.As(err, &r) || r.Code != 550 {
		t.Fatalf("refused RCPT: %v", err)
	}
	replies, err := c.Data(strings.NewReader("Subject: x\r\n\r\n.hidden\r\n..two\r\nlast"), 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != 2 || !replies[0].OK() || !replies[1].Temporary() {
		t.Fatalf("replies %v", replies)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	want := "LHLO test\r\nMAIL FROM:<s@y.example>\r\nRCPT TO:<a@x.example>\r\nRCPT TO:<b@x.example>\r\n" +
		"RCPT TO:<nobody@x.example>\r\nDATA\r\nSubject: x\r\n\r\n..hidden\r\n...two\r\nlast\r\n.\r\nQUIT\r\n"
	if s := <-got; s != want {
		t.Errorf("sent\n%q\nwant\n%q", s, want)
	}
}

func TestDotWriter(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", ".\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"a\r", "a\r\n.\r\n"},
		{"x\r\n.y", "x\r\n..y\r\n.\r\n"},
	} {
		var b bytes.Buffer
		d := &dotWriter{w: &b, atLineStart: true}
		// Byte by byte, so that chunk edges fall everywhere.
		for i := range len(c.in) {
			if _, err := d.Write([]byte{c.in[i]}); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.close(); err != nil {
			t.Fatal(err)
		}
		if b.String() != c.want {
			t.Errorf("%q: %q, want %q", c.in, b.String(), c.want)
		}
	}
}

func TestBadReplies(t *testing.T) {
	for _, bad := range []string{"2\r\n", "abc ok\r\n", "250-a\r\n251 b\r\n", strings.Repeat("250-x\r\n", 100), "250 " + strings.Repeat("x", 5000) + "\r\n"} {
		addr, _ := script(t, func(string) string { return bad })
		if _, err := Dial(context.Background(), "tcp", addr, "test", 2*time.Second); err == nil {
			t.Errorf("%.20q accepted", bad)
		}
	}
}

// TestTimeout checks that a silent server is given up at the deadline.
func TestTimeout(t *testing.T) {
	addr, _ := script(t, func(string) string { return "" })
	start := time.Now()
	if _, err := Dial(context.Background(), "tcp", addr, "test", 200*time.Millisecond); err == nil {
		t.Fatal("no error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}
