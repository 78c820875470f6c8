/* consumer.c - a program built against an installed libshmb (tests/install_test.sh). */
#include <shmb.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
	shmb_client *c = NULL;
	int rc = shmb_attach("install-test-no-such-broker", &c);
	printf("libshmb %s: attach without a broker: %s (%s)\n", shmb_version(), shmb_err_name(rc),
	       shmb_strerror(rc));
	if (rc != SHMB_EBROKER || c)
		return 1;
	return strcmp(shmb_err_name(SHMB_EINVAL), "SHMB_EINVAL") == 0 ? 0 : 1;
}
