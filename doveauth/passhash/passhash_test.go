package passhash

import (
	"strings"
	"testing"
)

// Vectors from the SHA-crypt specification.
func TestSHA512CryptVectors(t *testing.T) {
	for _, v := range []struct {
		password, salt string
		rounds         int
		want           string
	}{
		{"Hello world!", "saltstring", 0, "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"},
		{"Hello world!", "saltstringsaltstring", 10000, "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."},
		{"This is just a test", "toolongsaltstring", 5000, "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"},
		{"a very much longer text to encrypt.  This one even stretches over morethan one line.", "anotherlongsaltstring", 1400, "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"},
		{"we have a short salt string but not a short password", "short", 77777, "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"},
		{"the minimum number is still observed", "roundstoolow", 10, "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."},
	} {
		if got := SHA512CryptWithSalt(v.password, v.salt, v.rounds); got != v.want {
			t.Errorf("SHA512CryptWithSalt(%q, %q, %d)\n got %s\nwant %s", v.password, v.salt, v.rounds, got, v.want)
		}
	}
}

func TestHash(t *testing.T) {
	for _, scheme := range []string{SHA512Crypt, Argon2ID} {
		h1, err := Hash(scheme, "secret123")
		if err != nil {
			t.Fatal(err)
		}
		h2, _ := Hash(scheme, "secret123")
		if Scheme(h1) != scheme || h1 == h2 || strings.Contains(h1, "secret123") {
			t.Errorf("%s: bad hashes %q %q", scheme, h1, h2)
		}
	}
	if _, err := Hash("PLAIN", "x"); err == nil {
		t.Error("PLAIN accepted")
	}
}
