package accounts

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestReadMigrations(t *testing.T) {
	ms, err := readMigrations(migrations)
	if err != nil || len(ms) == 0 {
		t.Fatalf("embedded migrations: %v %v", ms, err)
	}
	for i := 1; i < len(ms); i++ {
		if ms[i].version <= ms[i-1].version {
			t.Fatalf("out of order: %v", ms)
		}
	}
	ms, err = readMigrations(fstest.MapFS{
		"migrations/010_b.sql": {Data: []byte("b")},
		"migrations/002_a.sql": {Data: []byte("a")},
	})
	if err != nil || len(ms) != 2 || ms[0].version != 2 || ms[1].body != "b" {
		t.Fatalf("numeric order: %+v %v", ms, err)
	}
	for files, want := range map[string]string{
		"migrations/002_a.sql migrations/002_b.sql": "same number",
		"migrations/x_a.sql":                        "bad migration name",
		"migrations/000_a.sql":                      "bad migration name",
	} {
		fsys := fstest.MapFS{}
		for _, f := range strings.Fields(files) {
			fsys[f] = &fstest.MapFile{Data: []byte("x")}
		}
		if _, err := readMigrations(fsys); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", files, err, want)
		}
	}
}
