package server

import (
	"testing"

	"chatmail.dev/sidecar/config"
)

const common = "[mail]\ndomains = [\"chat.test\"]\n"

// parse runs config.Parse on the [logd] section.
func parse(t *testing.T, text string) (*Config, error) {
	t.Helper()
	c := Defaults()
	_, err := config.Parse(common+text, "logd", &c)
	return &c, err
}

func TestSection(t *testing.T) {
	c, err := parse(t, "[logd]\noutput = \"/var/log/x.log\"\nqueue_length = 10\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Output != "/var/log/x.log" || c.QueueLength != 10 || c.Metrics != "127.0.0.1:9727" {
		t.Fatalf("%+v", c)
	}
	for _, bad := range []string{
		"[logd]\nqueue_length = 0\n",
		"[logd]\noutput = \"rel.log\"\n",
		"[logd]\nmetrics = \"0.0.0.0:9727\"\n",
		"[logd]\nsockett = \"/x\"\n",
		"[logd]\npostfix_socket = \"\"\ndovecot_socket = \"\"\n",
	} {
		if _, err := parse(t, bad); err == nil || !config.IsError(err) {
			t.Errorf("%q: got %v, want a config error", bad, err)
		}
	}
}

// TestExampleIsDefaults: chatmail.toml.example shows the [logd] defaults.
func TestExampleIsDefaults(t *testing.T) {
	if err := config.CheckExample("../../chatmail.toml.example", "logd", Defaults); err != nil {
		t.Error(err)
	}
}
