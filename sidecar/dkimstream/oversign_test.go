package dkimstream

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// allowlist returns the field names of mailpolicy's header allowlist, the
// keys of fieldRules in its headers.go. It is read from the source, since
// mailpolicy imports this package and exports no list.
func allowlist(t *testing.T) []string {
	t.Helper()
	path := filepath.Join("..", "mailpolicy", "headers.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	found := false
	ast.Inspect(f, func(n ast.Node) bool {
		spec, ok := n.(*ast.ValueSpec)
		if !ok || len(spec.Names) != 1 || spec.Names[0].Name != "fieldRules" || len(spec.Values) != 1 {
			return true
		}
		lit, ok := spec.Values[0].(*ast.CompositeLit)
		if !ok {
			t.Fatalf("%s: fieldRules is not a composite literal", path)
		}
		found = true
		for _, e := range lit.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				t.Fatalf("%s: fieldRules has an element without a key", path)
			}
			key, ok := kv.Key.(*ast.BasicLit)
			if !ok || key.Kind != token.STRING {
				t.Fatalf("%s: fieldRules has a key that is not a string literal", path)
			}
			name, err := strconv.Unquote(key.Value)
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, name)
		}
		return false
	})
	if !found || len(names) < 10 {
		t.Fatalf("%s: fieldRules not found (%d names): has the allowlist moved?", path, len(names))
	}
	return names
}

// TestOversignAllowlist: every field on mailpolicy's allowlist is
// oversigned, in the signature Sign makes: h= names it once more than the
// message holds it, and a field of the allowlist added after signing, as
// a copy above the signed one or where there was none, breaks the
// signature.
func TestOversignAllowlist(t *testing.T) {
	names := allowlist(t)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := &SignKey{Domain: "chat.example", Selector: "sel", Signer: priv}
	keys := Map{"sel._domainkey.chat.example": "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}
	head := []string{"From: <alice@chat.example>", "To: <bob@chat.example>", "Subject: [...]", "Date: Thu, 26 Nov 2026 12:01:03 +0000"}
	fieldNames := []string{"From", "To", "Subject", "Date"}
	msg := strings.Join(head, "\r\n") + "\r\n\r\nbody\r\n"

	g, err := Sign(key, fieldNames)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	sig, err := g.Finish()
	if err != nil {
		t.Fatal(err)
	}
	signed := "DKIM-Signature: " + sig + "\r\n" + msg

	// h= counts each name case-insensitively, as verifiers match them.
	h := map[string]int{}
	for tag := range strings.SplitSeq(sig, ";") {
		k, v, _ := strings.Cut(tag, "=")
		if strings.TrimSpace(k) != "h" {
			continue
		}
		for name := range strings.SplitSeq(v, ":") {
			h[strings.ToLower(strings.Join(strings.Fields(name), ""))]++
		}
	}
	verify := func(m string) Outcome {
		t.Helper()
		v := Verify(keys)
		if _, err := v.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
		o, err := v.Result(context.Background(), "chat.example")
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	if o := verify(signed); o != Pass {
		t.Fatalf("the signed message: %v", o)
	}
	for _, name := range names {
		present := 0
		for _, n := range fieldNames {
			if strings.EqualFold(n, name) {
				present++
			}
		}
		if got := h[strings.ToLower(name)]; got != present+1 {
			t.Errorf("%s: %d times in h=, present %d times: not oversigned", name, got, present)
		}
		// Added at the top, below the signature, where a relay puts its
		// own fields and a forger a copy the reader sees first.
		added := "DKIM-Signature: " + sig + "\r\n" + name + ": 1\r\n" + msg
		if o := verify(added); o != Invalid {
			t.Errorf("%s added after signing: %v, want %v", name, o, Invalid)
		}
	}
}
