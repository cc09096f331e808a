/// Little-endian integers at byte offsets of guest or file bytes (the caller checks the bounds).
func le16(_ d: [UInt8], _ o: Int) -> UInt16 { UInt16(d[o]) | UInt16(d[o + 1]) << 8 }
func le32(_ d: [UInt8], _ o: Int) -> UInt32 { UInt32(le16(d, o)) | UInt32(le16(d, o + 2)) << 16 }
func le64(_ d: [UInt8], _ o: Int) -> UInt64 { UInt64(le32(d, o)) | UInt64(le32(d, o + 4)) << 32 }
