package metadict

import (
	"errors"
	"strings"
	"testing"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/logging/logtest"
)

// TestNoLogNamesNoOne drives every path that logs (tokens set, refused,
// removed, new mail, a missing account, the store failing) and looks for
// the account and the token in the log: the token is never there, the
// account only as a masked attribute, so not at all under No-Log.
func TestNoLogNamesNoOne(t *testing.T) {
	const token = "openpgp:c2VjcmV0dG9rZW4"
	const badToken = "openpgp:bad token"
	for _, nolog := range []bool{true, false} {
		log, _, buf := logtest.New(nolog)
		st := newFake()
		st.missing["gone@example.org"] = true
		s := newService(st, log)
		sock := serve(t, s)
		tok := "priv/" + guid + "/devicetoken"
		run := func() {
			session(t, sock, hello24+
				"B1\t"+alice+"\t0\nS1\t"+tok+"\t"+token+"\nC1\n"+
				"B2\t"+alice+"\t0\nS2\t"+tok+"\t"+badToken+"\nC2\n"+
				"B3\t"+alice+"\t0\nS3\tpriv/"+guid+"/messagenew\t\nC3\n"+
				"B4\t"+alice+"\t0\nU4\t"+tok+"\nC4\n"+
				"B5\tgone@example.org\t0\nS5\t"+tok+"\t"+token+"\nC5\n"+
				"L"+server+"vendor/deltachat/turn\tgone@example.org\n"+
				"L"+tok+"\t"+alice+"\n", 7)
		}
		run()
		st.fail = errors.New("connection to server failed: " + alice) // a library error quoting an address
		run()
		out := buf.String()
		if leaks := logtest.Leaks(out, token, "c2VjcmV0dG9rZW4", "bad token"); len(leaks) > 0 {
			t.Errorf("nolog=%v: the log holds a token:\n%s", nolog, out)
		}
		if nolog {
			if leaks := logtest.Leaks(out, alice, "gone@example.org"); len(leaks) > 0 {
				t.Errorf("No-Log: the log names %q:\n%s", leaks, out)
			}
			if bad := logtest.Shapes(out); len(bad) > 0 {
				t.Errorf("No-Log: identities in %q", bad)
			}
		} else if !strings.Contains(out, alice) {
			// The test must see the logging it checks.
			t.Errorf("without No-Log nothing names the account: the paths did not log\n%s", out)
		}
	}
	if accounts.ValidDeviceToken("openpgp:bad token") {
		t.Fatal("the bad token is valid")
	}
}
