// Command chatmail-capture records what real Delta Chat clients submit
// over SMTP, message by message, as fixtures for the milter's tests
// (sidecar/testdata/clients/dc-<version>/<shape>.eml), and writes an
// inventory of their outer shapes.
//
// It starts a private stack without the milter (so that nothing is
// refused, not even the cleartext Secure-Join requests of old cores), and
// a recording SMTP proxy that every client uses as its SMTP server: the
// proxy saves each message exactly as the client submitted it, before any
// server added or changed anything, and passes it on to the stack's
// submission port with the client's credentials. IMAP goes to the stack
// directly. Then it drives clients of each version through the chat
// actions of interest and names each captured message after the action and
// the handshake step it belongs to.
//
// Usage, from integration/, as root (the stack needs Postfix and Dovecot):
//
//	go run ./cmd/chatmail-capture [-versions 2.62.0,2.33.0,...] [-out DIR]
//	go run ./cmd/chatmail-capture -inventory DIR   # markdown to stdout
//
// Version 2.62.0 (the pinned core) is found like the tests find it; other
// versions under .deltachat/<version>/ (see scripts/install-deps). Set
// CAPTURE_BIN to a directory with doveauth and chatmail-admin built
// already to skip building them.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// current is the version of the pinned core, the one FindBinary finds.
const current = "2.62.0"

func main() {
	versions := flag.String("versions", "2.62.0,2.48.0,2.33.0,1.160.0,1.151.3,1.139.3", "core versions to capture, comma-separated")
	cross := flag.String("cross", "2.33.0", "old versions whose (legacy) invitations a current client also joins, comma-separated")
	out := flag.String("out", filepath.Join(stack.Repo(), "sidecar", "testdata", "clients"), "fixture directory")
	inventory := flag.String("inventory", "", "write the inventory of the fixtures in this directory to stdout, and do nothing else")
	verbose := flag.Bool("v", false, "log the cores' warnings")
	flag.Parse()
	log.SetFlags(log.Ltime)

	if *inventory != "" {
		if err := writeInventory(os.Stdout, *inventory); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(split(*versions), split(*cross), *out, *verbose); err != nil {
		log.Fatal(err)
	}
}

func split(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func run(versions, cross []string, out string, verbose bool) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	s, err := upWithoutMilter()
	if err != nil {
		return err
	}
	defer func() {
		if derr := s.Down(); derr != nil && err == nil {
			err = derr
		}
	}()
	log.Printf("stack without milter in %s, domain %s", s.Dir, s.Domain)

	px, err := startProxy(s.Addr("SUBMISSION_PORT"))
	if err != nil {
		return err
	}
	defer px.close()

	e := &env{ctx: ctx, s: s, px: px, out: out, rpcs: map[string]*deltachat.RPC{}}
	var logw io.Writer = io.Discard
	if verbose {
		logw = os.Stderr
	}
	tmp, err := os.MkdirTemp("", "dccapture")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, v := range append(append([]string{}, versions...), cross...) {
		if e.rpcs[v] != nil {
			continue
		}
		bin, err := binaryFor(v)
		if err != nil {
			return err
		}
		rpc, err := deltachat.Start(ctx, deltachat.Options{Binary: bin, AccountsDir: filepath.Join(tmp, v), Log: logw})
		if err != nil {
			return fmt.Errorf("core %s: %w", v, err)
		}
		defer rpc.Close()
		e.rpcs[v] = rpc
	}
	if len(cross) > 0 && e.rpcs[current] == nil {
		bin, err := binaryFor(current)
		if err != nil {
			return err
		}
		rpc, err := deltachat.Start(ctx, deltachat.Options{Binary: bin, AccountsDir: filepath.Join(tmp, current), Log: logw})
		if err != nil {
			return err
		}
		defer rpc.Close()
		e.rpcs[current] = rpc
	}

	for _, v := range versions {
		log.Printf("capturing %s", v)
		if v == current {
			err = e.captureCurrent()
		} else {
			err = e.captureOld(v)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", v, err)
		}
	}
	for _, v := range cross {
		log.Printf("capturing %s joining %s's legacy invitations", current, v)
		if err := e.captureCross(v); err != nil {
			return fmt.Errorf("%s joining %s: %w", current, v, err)
		}
	}
	return nil
}

func binaryFor(version string) (string, error) {
	if version == current {
		return deltachat.FindBinary()
	}
	return deltachat.FindVersionBinary(version)
}

// upWithoutMilter starts a stack whose Postfix has no milter: scripts/stack
// starts the milter only if its binary is there, so only doveauth and
// chatmail-admin are built.
//
// If $CAPTURE_BIN names a directory of daemons built already, those are
// used instead (any chatmail-milter there is ignored).
func upWithoutMilter() (*stack.Stack, error) {
	if dir := os.Getenv("CAPTURE_BIN"); dir != "" {
		bin, err := os.MkdirTemp("", "cmbin")
		if err != nil {
			return nil, err
		}
		for _, name := range []string{"doveauth", "chatmail-admin"} {
			if err := os.Symlink(filepath.Join(dir, name), filepath.Join(bin, name)); err != nil {
				return nil, err
			}
		}
		if err := os.Setenv("STACK_BIN", bin); err != nil {
			return nil, err
		}
		return stack.Up()
	}
	bin, err := os.MkdirTemp("", "cmbin")
	if err != nil {
		return nil, err
	}
	build := exec.Command("go", "build", "-o", bin+"/", "chatmail.dev/doveauth/cmd/...", "chatmail.dev/admin/cmd/...")
	build.Dir = stack.Repo()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building doveauth: %v\n%s", err, out)
	}
	// stack.Up uses STACK_BIN as it is; the daemons run from there for the
	// life of the stack, so the directory is left for the OS to clean.
	if err := os.Setenv("STACK_BIN", bin); err != nil {
		return nil, err
	}
	return stack.Up()
}
