package main

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"chatmail.dev/admin"
	"chatmail.dev/sidecar/config"
)

func TestUsage(t *testing.T) {
	cfg := config.Defaults()
	sec := admin.DefaultConfig()
	for _, args := range [][]string{nil, {"frobnicate"}, {"list", "x"}, {"block"}, {"delete", "a@b", "c@d"}, {"nolog"}, {"nolog", "maybe"}} {
		if err := run(&cfg, &sec, args, &bytes.Buffer{}); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

func TestNolog(t *testing.T) {
	cfg := config.Defaults()
	cfg.Log.NoLogFile = filepath.Join(t.TempDir(), "run", "nolog")
	sec := admin.DefaultConfig()
	for _, c := range []struct{ arg, want string }{{"status", "nolog off"}, {"on", "nolog on"}, {"status", "nolog on"}, {"off", "nolog off"}, {"off", "nolog off"}} {
		var out bytes.Buffer
		if err := run(&cfg, &sec, []string{"nolog", c.arg}, &out); err != nil || strings.TrimSpace(out.String()) != c.want {
			t.Errorf("nolog %s: %q %v, want %q", c.arg, out.String(), err, c.want)
		}
	}
}

// Nothing in the admin module waits on a clock: deleting an account no
// longer sleeps through doveauth's cache lifetime (the store tells
// doveauth instead).
func TestNoSleep(t *testing.T) {
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := sel.X.(*ast.Ident); ok && id.Name == "time" && sel.Sel.Name == "Sleep" {
					t.Errorf("time.Sleep at %s", fset.Position(n.Pos()))
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
