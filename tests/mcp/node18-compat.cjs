// node18-compat.cjs - preloaded (node --require) by conformance.sh. Debian 12's nodejs is 18.x,
// which has no global File; undici 7, a dependency of the pinned conformance suite, uses it as
// soon as it loads ("ReferenceError: File is not defined"). Node 18 has the same class in
// node:buffer; Node 20 and later have the global, and this does nothing there.
'use strict';
if (typeof globalThis.File === 'undefined')
	globalThis.File = require('node:buffer').File;
