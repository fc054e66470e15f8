package eif

import (
	"encoding/json"
	"time"
)

// BuildMetadata is the build part of the metadata section.
type BuildMetadata struct {
	BuildTime        string
	BuildTool        string
	BuildToolVersion string
	OperatingSystem  string
	KernelVersion    string
}

// Identity is the metadata section's JSON (nitro-cli's EifIdentityInfo).
type Identity struct {
	ImageName      string
	ImageVersion   string
	BuildMetadata  BuildMetadata
	DockerInfo     json.RawMessage
	CustomMetadata json.RawMessage
}

// BuildTime formats t as nitro-cli does (RFC 3339, UTC). Builders pass the
// time from SOURCE_DATE_EPOCH so that the metadata is reproducible.
func BuildTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05+00:00")
}

// Marshal returns the metadata section's bytes. Null raw fields are
// written as JSON null.
func (id Identity) Marshal() ([]byte, error) {
	if id.DockerInfo == nil {
		id.DockerInfo = json.RawMessage("null")
	}
	if id.CustomMetadata == nil {
		id.CustomMetadata = json.RawMessage("null")
	}
	return json.Marshal(id)
}

// Description is `nitro-cli describe-eif`'s output.
type Description struct {
	EifVersion       uint16
	Measurements     Measurements
	IsSigned         bool
	CheckCRC         bool
	ArchitectureType string
	SignatureCheck   *bool  `json:",omitempty"`
	ImageName        string `json:",omitempty"`
	ImageVersion     string `json:",omitempty"`
	// Metadata is the build metadata with DockerInfo and CustomMetadata
	// beside it, as describe-eif flattens them; nil without a metadata
	// section.
	Metadata *DescribedMetadata `json:",omitempty"`
}

// DescribedMetadata is describe-eif's Metadata object.
type DescribedMetadata struct {
	BuildMetadata
	DockerInfo     json.RawMessage
	CustomMetadata json.RawMessage
}

// Describe measures f and reads its metadata. f has passed Open, so its CRC
// is right (CheckCRC); a signature that does not verify is an error.
func Describe(f *File) (Description, error) {
	m, err := f.Measure()
	if err != nil {
		return Description{}, err
	}
	d := Description{
		EifVersion:       f.Header.Version,
		Measurements:     m,
		CheckCRC:         true,
		ArchitectureType: f.Arch(),
	}
	if m.PCR8 != nil {
		d.IsSigned = true
		if _, err := f.VerifySignature(m); err != nil {
			return Description{}, err
		}
		ok := true
		d.SignatureCheck = &ok
	}
	meta, err := f.Metadata()
	if err != nil {
		return Description{}, err
	}
	if meta != nil {
		var id Identity
		if err := json.Unmarshal(meta, &id); err != nil {
			return Description{}, bad("metadata", "not nitro-cli's EifIdentityInfo JSON: %v", err)
		}
		d.ImageName, d.ImageVersion = id.ImageName, id.ImageVersion
		d.Metadata = &DescribedMetadata{id.BuildMetadata, nullIfEmpty(id.DockerInfo), nullIfEmpty(id.CustomMetadata)}
	}
	return d, nil
}

func nullIfEmpty(m json.RawMessage) json.RawMessage {
	if len(m) == 0 {
		return json.RawMessage("null")
	}
	return m
}
