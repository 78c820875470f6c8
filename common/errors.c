/* errors.c - shmb_strerror() and shmb_err_name(), generated from the table in shmb.h. */
#include "shmb.h"

#define SHMB_STR_(x) #x
#define SHMB_XSTR_(x) SHMB_STR_(x)

const char *shmb_version(void)
{
	return SHMB_XSTR_(SHMB_VERSION_MAJOR) "." SHMB_XSTR_(SHMB_VERSION_MINOR) "." SHMB_XSTR_(
		SHMB_VERSION_PATCH);
}

const char *shmb_strerror(int code)
{
	switch (code) {
	case 0:
		return "success";
#define SHMB_ERR_MSG_(name, val, msg) \
	case SHMB_##name:             \
		return msg;
		SHMB_ERRNO_MAP(SHMB_ERR_MSG_)
#undef SHMB_ERR_MSG_
	default:
		return "unknown error";
	}
}

const char *shmb_err_name(int code)
{
	switch (code) {
	case 0:
		return "SHMB_OK";
#define SHMB_ERR_NAME_(name, val, msg) \
	case SHMB_##name:              \
		return "SHMB_" #name;
		SHMB_ERRNO_MAP(SHMB_ERR_NAME_)
#undef SHMB_ERR_NAME_
	default:
		return "SHMB_EUNKNOWN";
	}
}
