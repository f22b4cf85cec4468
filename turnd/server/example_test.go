package server

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"chatmail.dev/sidecar/config"
)

// chatmail.toml.example's [turnd] shows the defaults. They do not start
// without relay_address (no address to announce when relays bind
// 0.0.0.0), so the example's empty one is filled in first.
func TestExampleIsDefaults(t *testing.T) {
	b, err := os.ReadFile("../../chatmail.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(string(b), `relay_address = ""`, `relay_address = "192.0.2.1"`, 1)
	if text == string(b) {
		t.Fatal(`the example has no relay_address = ""`)
	}
	got := DefaultConfig()
	if _, err := config.Parse(text, "turnd", &got); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.RelayAddress = "192.0.2.1"
	if err := want.Validate(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the example's [turnd] differs from the defaults:\nexample  %+v\ndefaults %+v", got, want)
	}
	def := DefaultConfig()
	if err := def.Validate(); err == nil {
		t.Error("the defaults start without relay_address")
	}
}
