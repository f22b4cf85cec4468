package daemon

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"chatmail.dev/sidecar/config"
)

type section struct {
	Metrics string `toml:"metrics"`
}

func (s *section) Validate() error     { return nil }
func (s *section) MetricsAddr() string { return s.Metrics }

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "chatmail.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const good = "[mail]\ndomains = [\"chat.test\"]\n[log]\nnolog_file = \"\"\n[doveauth]\nmetrics = \"127.0.0.1:0\"\n"

type runFunc = func(ctx context.Context, env *Env, sec *section) error

func spec(sec *section, run runFunc) Spec[*section] {
	return Spec[*section]{Name: "doveauth", Section: sec, Run: run, DrainTimeout: time.Second}
}

func TestExitCodes(t *testing.T) {
	ok := func(context.Context, *Env, *section) error { return nil }
	for _, c := range []struct {
		name, config string
		run          runFunc
		want         int
	}{
		{"clean", good, ok, ExitOK},
		{"missing file", "", ok, ExitConfig},
		{"unknown key", good + "sockett = \"x\"\n", ok, ExitConfig},
		{"config error at run time", good, func(context.Context, *Env, *section) error {
			return &config.Error{Key: "postgres.dsn", Msg: "must be set"}
		}, ExitConfig},
		{"runtime failure", good, func(context.Context, *Env, *section) error { return os.ErrPermission }, ExitFailure},
	} {
		path := "/nonexistent/chatmail.toml"
		if c.config != "" {
			path = writeConfig(t, c.config)
		}
		if got := run(spec(&section{}, c.run), path); got != c.want {
			t.Errorf("%s: exit %d, want %d", c.name, got, c.want)
		}
	}
}

// SIGTERM cancels Run's context; Run drains and the daemon exits cleanly.
func TestSIGTERMDrains(t *testing.T) {
	drained := make(chan struct{})
	started := make(chan struct{})
	code := make(chan int, 1)
	go func() {
		code <- run(spec(&section{}, func(ctx context.Context, env *Env, _ *section) error {
			close(started)
			<-ctx.Done()
			close(drained)
			return nil
		}), writeConfig(t, good))
	}()
	<-started
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case c := <-code:
		if c != ExitOK {
			t.Errorf("exit %d after SIGTERM", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	select {
	case <-drained:
	default:
		t.Error("Run was not asked to drain")
	}
}
