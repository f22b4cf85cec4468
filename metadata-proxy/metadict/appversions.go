package metadict

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// MaxAppVersionsSize bounds the appversions file: the value goes on one
// dict line (at most 64 KiB) and to every client at login.
const MaxAppVersionsSize = 32 << 10

// LoadAppVersions reads the appversions file and returns it as served:
// one line of compact JSON. It checks the schema the reference relay
// checks (check_appversions):
//
//	{"clients": [{"clientId": str, "sources": [{"sourceId": str,
//	  "versionInteger": 0..2^32-1, "versionString": str,
//	  "downloadUrl": "https://github.com/deltachat/..." or "https://download.delta.chat/..."}]}]}
//
// with every field present, no other field (key names match exactly: a
// misspelled one is an error, not a default), a version that is a JSON
// integer (not 754.0, "754" or true), and no clientId twice, nor a
// sourceId twice within a client.
func LoadAppVersions(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if len(b) > MaxAppVersionsSize {
		return "", fmt.Errorf("appversions: larger than %d bytes", MaxAppVersionsSize)
	}
	return CheckAppVersions(b)
}

// CheckAppVersions is LoadAppVersions on the file's content.
func CheckAppVersions(b []byte) (string, error) {
	top, err := object(b, "the file", "clients")
	if err != nil {
		return "", err
	}
	var clients []json.RawMessage
	if err := json.Unmarshal(top["clients"], &clients); err != nil {
		return "", errors.New("appversions: clients is not a list")
	}
	seenClient := map[string]bool{}
	for i, c := range clients {
		where := fmt.Sprintf("clients[%d]", i)
		o, err := object(c, where, "clientId", "sources")
		if err != nil {
			return "", err
		}
		id, err := str(o["clientId"], where+".clientId")
		if err != nil {
			return "", err
		}
		if seenClient[id] {
			return "", fmt.Errorf("appversions: clientId %q twice", id)
		}
		seenClient[id] = true
		var sources []json.RawMessage
		if err := json.Unmarshal(o["sources"], &sources); err != nil {
			return "", fmt.Errorf("appversions: %s.sources is not a list", where)
		}
		seenSource := map[string]bool{}
		for j, s := range sources {
			where := fmt.Sprintf("%s.sources[%d]", where, j)
			o, err := object(s, where, "sourceId", "versionInteger", "versionString", "downloadUrl")
			if err != nil {
				return "", err
			}
			id, err := str(o["sourceId"], where+".sourceId")
			if err != nil {
				return "", err
			}
			if seenSource[id] {
				return "", fmt.Errorf("appversions: sourceId %q twice in %s", id, where)
			}
			seenSource[id] = true
			if !u32RE.Match(o["versionInteger"]) {
				return "", fmt.Errorf("appversions: %s.versionInteger is not an integer of 0 to 2^32-1", where)
			}
			if v, err := strconv.ParseUint(string(o["versionInteger"]), 10, 32); err != nil || v > 1<<32-1 {
				return "", fmt.Errorf("appversions: %s.versionInteger is not an integer of 0 to 2^32-1", where)
			}
			if _, err := str(o["versionString"], where+".versionString"); err != nil {
				return "", err
			}
			url, err := str(o["downloadUrl"], where+".downloadUrl")
			if err != nil {
				return "", err
			}
			if !strings.HasPrefix(url, "https://github.com/deltachat/") && !strings.HasPrefix(url, "https://download.delta.chat/") {
				return "", fmt.Errorf("appversions: %s.downloadUrl is neither on github.com/deltachat nor on download.delta.chat", where)
			}
		}
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return "", fmt.Errorf("appversions: %w", err)
	}
	return out.String(), nil
}

var u32RE = regexp.MustCompile(`^(0|[1-9][0-9]{0,9})$`)

// object decodes a JSON object that has exactly the keys named.
func object(b []byte, where string, keys ...string) (map[string]json.RawMessage, error) {
	var o map[string]json.RawMessage
	if err := json.Unmarshal(b, &o); err != nil || o == nil {
		return nil, fmt.Errorf("appversions: %s is not a JSON object", where)
	}
	for _, k := range keys {
		if _, ok := o[k]; !ok {
			return nil, fmt.Errorf("appversions: %s has no %q", where, k)
		}
	}
	if len(o) != len(keys) {
		for k := range o {
			found := false
			for _, want := range keys {
				found = found || k == want
			}
			if !found {
				return nil, fmt.Errorf("appversions: %s has an unknown key %q", where, k)
			}
		}
	}
	return o, nil
}

func str(b json.RawMessage, where string) (string, error) {
	var s string
	if len(b) == 0 || b[0] != '"' || json.Unmarshal(b, &s) != nil {
		return "", fmt.Errorf("appversions: %s is not a string", where)
	}
	return s, nil
}
