package unit

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Split breaks a command line into words the way a POSIX shell splits words,
// without any of the shell's expansions:
//
//   - whitespace (as unicode.IsSpace, the same set strings.Fields uses)
//     separates words;
//   - 'single quotes' keep everything literally up to the next single quote;
//   - "double quotes" keep everything literally except that a backslash
//     escapes \, ", $, ` and newline (a backslash before anything else stays);
//   - outside quotes a backslash escapes the next character, and a
//     backslash-newline pair disappears (line continuation);
//   - "" and ” produce an empty word.
//
// $VAR, globs, ~, ;, |, &&, > and # have no special meaning: they are passed
// to the program as written. An unterminated quote or a trailing backslash is
// an error naming the byte position where it starts.
func Split(cmdline string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		inWord bool // cur holds a word, possibly empty ("" or '')
	)
	end := func() {
		if inWord {
			words = append(words, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	s := cmdline
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated single quote at position %d", i)
			}
			cur.WriteString(s[i+1 : i+1+j])
			inWord = true
			i += j + 2
		case c == '"':
			start := i
			i++
			closed := false
			for i < len(s) {
				d := s[i]
				if d == '"' {
					closed = true
					i++
					break
				}
				if d == '\\' && i+1 < len(s) {
					switch s[i+1] {
					case '\\', '"', '$', '`':
						cur.WriteByte(s[i+1])
						i += 2
						continue
					case '\n':
						i += 2
						continue
					}
				}
				cur.WriteByte(d)
				i++
			}
			if !closed {
				return nil, fmt.Errorf("unterminated double quote at position %d", start)
			}
			inWord = true
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("trailing backslash at position %d escapes nothing", i)
			}
			if s[i+1] == '\n' {
				i += 2 // line continuation
				continue
			}
			// Escape one whole character, not one byte, so that UTF-8
			// sequences stay intact.
			_, size := utf8.DecodeRuneInString(s[i+1:])
			cur.WriteString(s[i+1 : i+1+size])
			inWord = true
			i += 1 + size
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if unicode.IsSpace(r) {
				end()
			} else {
				cur.WriteString(s[i : i+size])
				inWord = true
			}
			i += size
		}
	}
	end()
	return words, nil
}

// Quote returns s quoted so that Split gives it back as one word. It is used
// to show argv lists in a form that can be pasted back into ExecStart.
func Quote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for _, r := range s {
		if unicode.IsSpace(r) || strings.ContainsRune(`'"\`, r) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Join writes argv as one command line that Split reads back as the same
// words, each quoted by Quote as needed.
func Join(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}
