package server

import (
	"testing"

	"chatmail.dev/sidecar/config"
)

// TestExampleIsDefaults: chatmail.toml.example shows the [doveauth] defaults.
func TestExampleIsDefaults(t *testing.T) {
	if err := config.CheckExample("../../chatmail.toml.example", "doveauth", DefaultConfig); err != nil {
		t.Error(err)
	}
}

// The HTTP socket is a unix socket path, never a TCP address: it hands out
// password hashes and creates accounts.
func TestHTTPSocketIsAPath(t *testing.T) {
	for addr, ok := range map[string]bool{
		"":                          true, // off
		"/run/doveauth/http.socket": true,
		"127.0.0.1:9722":            false,
		"localhost:9722":            false,
		"run/doveauth/http.socket":  false,
		"unix:/run/doveauth/x.sock": false,
	} {
		c := DefaultConfig()
		c.HTTPSocket = addr
		if err := c.Validate(); (err == nil) != ok {
			t.Errorf("http_socket %q: %v", addr, err)
		}
	}
}
