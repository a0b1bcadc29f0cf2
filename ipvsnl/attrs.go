package ipvsnl

// Numbers from include/uapi/linux/ip_vs.h (generic netlink interface).

const (
	genlName    = "IPVS"
	genlVersion = 1
)

// Commands used besides the write commands of [Command].
const (
	cmdGetService uint8 = 4
	cmdGetDest    uint8 = 8
	cmdNewDaemon  uint8 = 9
	cmdDelDaemon  uint8 = 10
	cmdGetDaemon  uint8 = 11
	cmdSetInfo    uint8 = 14 // GET_INFO's reply command
	cmdGetInfo    uint8 = 15
	cmdZero       uint8 = 16
)

// First-level attributes.
const (
	cmdAttrService uint16 = 1
	cmdAttrDest    uint16 = 2
	cmdAttrDaemon  uint16 = 3
)

// Attributes nested in cmdAttrService.
const (
	svcAttrAF        uint16 = 1
	svcAttrProtocol  uint16 = 2
	svcAttrAddr      uint16 = 3
	svcAttrPort      uint16 = 4 // big endian
	svcAttrFWMark    uint16 = 5
	svcAttrSchedName uint16 = 6
	svcAttrFlags     uint16 = 7 // struct ip_vs_flags {flags, mask}
	svcAttrTimeout   uint16 = 8
	svcAttrNetmask   uint16 = 9 // IPv4: mask bytes; IPv6: prefix length
	svcAttrStats     uint16 = 10
	svcAttrPEName    uint16 = 11
	svcAttrStats64   uint16 = 12
)

// Attributes nested in cmdAttrDest.
const (
	destAttrAddr         uint16 = 1
	destAttrPort         uint16 = 2 // big endian
	destAttrFwdMethod    uint16 = 3
	destAttrWeight       uint16 = 4
	destAttrUThresh      uint16 = 5
	destAttrLThresh      uint16 = 6
	destAttrActiveConns  uint16 = 7
	destAttrInactConns   uint16 = 8
	destAttrPersistConns uint16 = 9
	destAttrStats        uint16 = 10
	destAttrAddrFamily   uint16 = 11
	destAttrStats64      uint16 = 12
	destAttrTunType      uint16 = 13
	destAttrTunPort      uint16 = 14 // big endian
	destAttrTunFlags     uint16 = 15
)

// Attributes nested in cmdAttrDaemon.
const (
	daemonAttrState      uint16 = 1
	daemonAttrMcastIfn   uint16 = 2
	daemonAttrSyncID     uint16 = 3
	daemonAttrSyncMaxLen uint16 = 4
	daemonAttrMcastGroup uint16 = 5 // IPv4 address bytes
	daemonAttrMcastGrp6  uint16 = 6
	daemonAttrMcastPort  uint16 = 7 // host order (nla_get_u16)
	daemonAttrMcastTTL   uint16 = 8
)

// Attributes nested in the stats attributes.
const (
	statsAttrConns    uint16 = 1
	statsAttrInPkts   uint16 = 2
	statsAttrOutPkts  uint16 = 3
	statsAttrInBytes  uint16 = 4
	statsAttrOutBytes uint16 = 5
	statsAttrCPS      uint16 = 6
	statsAttrInPPS    uint16 = 7
	statsAttrOutPPS   uint16 = 8
	statsAttrInBPS    uint16 = 9
	statsAttrOutBPS   uint16 = 10
)

// Attributes of the GET_INFO reply.
const (
	infoAttrVersion     uint16 = 1
	infoAttrConnTabSize uint16 = 2
)

// Kernel string limits, including the terminating NUL.
const (
	schedNameMax = 16
	peNameMax    = 16
	ifNameMax    = 16
)
