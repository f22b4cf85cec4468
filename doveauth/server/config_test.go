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
