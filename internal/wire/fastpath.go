package wire

import "bytes"

// decodeCommon decodes, without encoding/json, the two request shapes that
// make up nearly all traffic, exactly as initctl writes them: a unit
// variant ("Ping") and a variant whose only field is a name
// ({"ServiceStatus":{"name":"web"}}), with no blanks inside, no escapes and
// only printable ASCII. It reports false for anything else, which then
// takes the general decoder; for what it accepts, the result is the one the
// general decoder gives (FuzzFastRequest checks this). It spares each such
// request two validation passes, a map and a reflective decode.
func decodeCommon(data []byte) (Request, bool) {
	data = bytes.TrimSpace(data) // as splitVariant
	if len(data) >= 2 && data[0] == '"' && data[len(data)-1] == '"' {
		if kind, known := kindNames[string(data[1:len(data)-1])]; known && requestFields[kind] == nil {
			return Request{Kind: kind}, true
		}
		return Request{}, false
	}
	// {"<kind>":{"name":"<name>"}}
	if len(data) < 2 || data[0] != '{' || data[len(data)-1] != '}' {
		return Request{}, false
	}
	inner := data[1 : len(data)-1]
	if len(inner) == 0 || inner[0] != '"' {
		return Request{}, false
	}
	i := bytes.IndexByte(inner[1:], '"') + 1 // the kind's closing quote
	if i <= 0 {
		return Request{}, false
	}
	kind, ok := kindNames[string(inner[1:i])] // no copy: the name is the table's
	if !ok {
		return Request{}, false
	}
	fields := requestFields[kind]
	if len(fields) != 1 || fields[0] != fName {
		return Request{}, false
	}
	body, ok := bytes.CutPrefix(inner[i+1:], []byte(`:{"name":`))
	if !ok || len(body) < 3 || body[len(body)-1] != '}' {
		return Request{}, false
	}
	name, ok := plainString(body[:len(body)-1])
	if !ok {
		return Request{}, false
	}
	return Request{Kind: kind, Name: name}, true
}

// kindNames maps each request variant name to itself, so that a name
// read from a request is found without copying it.
var kindNames = func() map[string]string {
	m := make(map[string]string, len(requestFields))
	for k := range requestFields {
		m[k] = k
	}
	return m
}()

// plainString returns the contents of b when b is one JSON string of
// printable ASCII with no escapes, whose decoding is its bytes.
func plainString(b []byte) (string, bool) {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return "", false
	}
	for _, c := range b[1 : len(b)-1] {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return "", false
		}
	}
	return string(b[1 : len(b)-1]), true
}
