<?php
/**
 * unistra.itop.itop role: set per-module settings ($MyModuleSettings) in an iTop configuration file through iTop's own
 * Config API, so the file keeps iTop's format and every other setting.
 *
 *   php itop-module-settings.php <APPROOT> <config file>   < {"<module>": {"<key>": <value>, ...}, ...}
 *
 * Prints "changed" when it wrote the file, "unchanged" otherwise. Exits 1 on error.
 */
if (PHP_SAPI !== 'cli' || $argc !== 3) {
	fwrite(STDERR, "usage: php itop-module-settings.php <APPROOT> <config file> < settings.json\n");
	exit(1);
}
$bBypassMaintenance = true; // a setting change must work while iTop is in maintenance
require_once rtrim($argv[1], '/').'/approot.inc.php';
$sConfigFile = $argv[2];
$aWanted = json_decode(stream_get_contents(STDIN), true);
if (!is_array($aWanted)) {
	fwrite(STDERR, "settings on stdin are not a JSON object\n");
	exit(1);
}
try {
	$oConfig = new Config($sConfigFile);
	$bChanged = false;
	foreach ($aWanted as $sModule => $aSettings) {
		foreach ((array)$aSettings as $sName => $value) {
			if ($oConfig->GetModuleSetting($sModule, $sName, null) !== $value) {
				$oConfig->SetModuleSetting($sModule, $sName, $value);
				$bChanged = true;
			}
		}
	}
	if ($bChanged) {
		$oConfig->WriteToFile($sConfigFile);
	}
	echo $bChanged ? "changed\n" : "unchanged\n";
} catch (Throwable $e) {
	fwrite(STDERR, get_class($e).': '.$e->getMessage()."\n");
	exit(1);
}
