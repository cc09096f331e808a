import CKVM
import Glibc

/// Owns one file descriptor; closes it on deinit.
final class OwnedFD: @unchecked Sendable {
    let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    deinit { if fd >= 0 { close(fd) } }
}

// The three ioctl shapes of the KVM API, each throwing a KVMError that names the request.
@inline(__always)
func kvmIoctl(_ fd: Int32, _ request: UInt, _ name: @autoclosure () -> String) throws(KVMError) -> Int32 {
    var err: Int32 = 0
    let r = ckvm_ioctl_none(fd, request, &err)
    if r < 0 { throw KVMError.ioctl(name: name(), errno: Errno(err)) }
    return r
}

@inline(__always)
func kvmIoctl(_ fd: Int32, _ request: UInt, _ name: @autoclosure () -> String, value: UInt) throws(KVMError) -> Int32 {
    var err: Int32 = 0
    let r = ckvm_ioctl_ulong(fd, request, value, &err)
    if r < 0 { throw KVMError.ioctl(name: name(), errno: Errno(err)) }
    return r
}

@inline(__always)
func kvmIoctl(_ fd: Int32, _ request: UInt, _ name: @autoclosure () -> String,
              pointer: UnsafeMutableRawPointer?) throws(KVMError) -> Int32 {
    var err: Int32 = 0
    let r = ckvm_ioctl_ptr(fd, request, pointer, &err)
    if r < 0 { throw KVMError.ioctl(name: name(), errno: Errno(err)) }
    return r
}

@inline(__always)
func kvmIoctl<T>(_ fd: Int32, _ request: UInt, _ name: @autoclosure () -> String,
                 _ value: inout T) throws(KVMError) -> Int32 {
    var err: Int32 = 0
    let r = withUnsafeMutablePointer(to: &value) { ckvm_ioctl_ptr(fd, request, $0, &err) }
    if r < 0 { throw KVMError.ioctl(name: name(), errno: Errno(err)) }
    return r
}
