// Package mimescan holds the pieces of MIME syntax that the judges of
// message bodies (pgpmime, bounce) and the header policy share: a line
// splitter with bounded memory, boundary delimiters read the way Delta
// Chat's parser reads them, header fields, Content-Type parameters that
// parsers cannot read differently, and the shapes of msg-ids and tokens.
package mimescan
