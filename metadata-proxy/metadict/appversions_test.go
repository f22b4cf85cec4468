package metadict

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const goodVersions = `{
  "clients": [
    {
      "clientId": "deltachat",
      "sources": [
        {"sourceId": "gplay", "versionInteger": 754, "versionString": "2.57.0\n(beta)",
         "downloadUrl": "https://github.com/deltachat/deltachat-android/releases"},
        {"sourceId": "web", "versionInteger": 4294967295, "versionString": "2.57.0",
         "downloadUrl": "https://download.delta.chat/android/"}
      ]
    },
    {"clientId": "other", "sources": []}
  ]
}
`

func TestAppVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "appversions.json")
	if err := os.WriteFile(path, []byte(goodVersions), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LoadAppVersions(path)
	if err != nil {
		t.Fatal(err)
	}
	// One compact line; the newline inside a string stays escaped.
	want := `{"clients":[{"clientId":"deltachat","sources":[{"sourceId":"gplay","versionInteger":754,"versionString":"2.57.0\n(beta)","downloadUrl":"https://github.com/deltachat/deltachat-android/releases"},{"sourceId":"web","versionInteger":4294967295,"versionString":"2.57.0","downloadUrl":"https://download.delta.chat/android/"}]},{"clientId":"other","sources":[]}]}`
	if got != want {
		t.Errorf("served\n%s\nwant\n%s", got, want)
	}
	if _, err := LoadAppVersions(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Error("a missing file loaded")
	}
}

func TestAppVersionsRejected(t *testing.T) {
	for name, bad := range map[string]string{
		"not json":           `{"clients": [`,
		"not an object":      `[]`,
		"no clients":         `{}`,
		"extra top key":      `{"clients": [], "x": 1}`,
		"clients not a list": `{"clients": {}}`,
		"version true":       `"versionInteger": true`,
		"version -1":         `"versionInteger": -1`,
		"version 2^32":       `"versionInteger": 4294967296`,
		"version string":     `"versionInteger": "754"`,
		"version float":      `"versionInteger": 754.0`,
		"version exponent":   `"versionInteger": 7e2`,
		"version null":       `"versionInteger": null`,
		"version leading 0":  `"versionInteger": 0754`,
		"clientID":           `"clientID": "deltachat"`,
		"source list":        `"Sources": [`,
		"duplicate source":   `"sourceId": "web"`,
		"foreign URL":        `"downloadUrl": "https://evil.example/deltachat/"`,
		"github other owner": `"downloadUrl": "https://github.com/deltachat-evil/x"`,
		"http":               `"downloadUrl": "http://download.delta.chat/x"`,
		"id not a string":    `"sourceId": 5`,
	} {
		text := bad
		if strings.HasPrefix(bad, `"`) {
			// A change to the good file: the first field of that name.
			field := bad[:strings.Index(bad, ":")]
			text = goodVersions
			switch field {
			case `"versionInteger"`:
				text = strings.Replace(text, `"versionInteger": 754`, bad, 1)
			case `"clientID"`:
				text = strings.Replace(text, `"clientId": "deltachat"`, bad, 1)
			case `"Sources"`:
				text = strings.Replace(text, `"sources": [`, bad, 1)
			case `"sourceId"`:
				text = strings.Replace(text, `"sourceId": "gplay"`, bad, 1)
			case `"downloadUrl"`:
				text = strings.Replace(text, `"downloadUrl": "https://github.com/deltachat/deltachat-android/releases"`, bad, 1)
			}
			if text == goodVersions {
				t.Fatalf("%s: the change did not apply", name)
			}
		}
		if got, err := CheckAppVersions([]byte(text)); err == nil {
			t.Errorf("%s: accepted, serving %s", name, got)
		}
	}
	dup := strings.Replace(goodVersions, `"clientId": "other"`, `"clientId": "deltachat"`, 1)
	if _, err := CheckAppVersions([]byte(dup)); err == nil {
		t.Error("duplicate clientId accepted")
	}
	big := filepath.Join(t.TempDir(), "big.json")
	os.WriteFile(big, []byte(`{"clients":[]}`+strings.Repeat(" ", MaxAppVersionsSize)), 0o644)
	if _, err := LoadAppVersions(big); err == nil {
		t.Error("an oversized file loaded")
	}
}
