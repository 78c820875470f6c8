// header_cxx.cpp - shmb.h compiles as C++11 (-pedantic-errors -Wold-style-cast) and links with
// C linkage: every declaration must sit inside extern "C".
#include <shmb.h>

#include <cstdio>
#include <cstring>

int main()
{
	shmb_session_info info;
	std::memset(&info, 0, sizeof info);
	shmb_event ev = shmb_event();
	(void)ev;
	shmb_client *c = nullptr;
	int rc = shmb_attach("no-such-instance-for-the-header-test", &c);
	if (rc >= 0 || c != nullptr) {
		shmb_detach(c);
		return 1;
	}
	if (std::strcmp(shmb_err_name(SHMB_EBROKER), "SHMB_EBROKER") != 0)
		return 1;
	std::printf("shmb %s (C++): attach without broker: %s\n", shmb_version(),
		    shmb_strerror(rc));
	return 0;
}
